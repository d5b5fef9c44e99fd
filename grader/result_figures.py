"""The PNGs a report shows, made from the probe's arrays (student) next to the reference's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figures
from .probe import ProbeData

N_RECON = 10   # test images shown reconstructed
N_SAMPLES = 20  # prior samples shown per model
N_PATHS = 3    # interpolation paths shown per model
ROLES = {"ae": "AE", "vae_beta0": "VAE beta=0", "vae_beta10": "VAE beta=10", "vae_tuned": "tuned VAE"}


def _images(array: np.ndarray | None, count: int) -> np.ndarray | None:
    if array is None or array.size % 784 or array.size // 784 < count:
        return None
    return array.reshape(-1, 28, 28)[:count]


def histories_for_figures(values: dict) -> dict:
    return {"ae": values.get("ae_history"), "vae": values.get("vae_histories") or {}}


def write_figures(out: Path, ctx, student: ProbeData, reference: ProbeData, measurement) -> dict[str, str]:
    """Write every figure that can be drawn; returns {name: file name in `out`}."""
    written: dict[str, str] = {}

    def keep(name: str, path: Path | None) -> None:
        if path is not None:
            written[name] = Path(path).name

    originals = ctx.inputs.test_x[:N_RECON].reshape(-1, 28, 28)
    for role in ROLES:
        mine = _images(student.get(f"{role}.recon"), N_RECON)
        theirs = _images(reference.get(f"{role}.recon"), N_RECON)
        keep(f"reconstructions_{role}", figures.reconstructions_png(out / f"recon_{role}.png", originals, mine, theirs))
        for side, probe in (("student", student), ("reference", reference)):
            samples = _images(probe.get(f"{role}.samples"), N_SAMPLES)
            if samples is None:
                continue
            judged = ctx.judge.judge(samples.reshape(-1, 1, 28, 28).astype(np.float32))
            confidence, label = judged.probs.max(dim=1)
            keep(f"samples_{role}_{side}",
                 figures.samples_png(out / f"samples_{role}_{side}.png", samples, label.numpy(), confidence.numpy()))
    steps = len(ctx.inputs.interp_alpha)
    for role in ("ae", "vae_tuned"):
        mine = _images(student.get(f"{role}.interp"), N_PATHS * steps)
        theirs = _images(reference.get(f"{role}.interp"), N_PATHS * steps)
        if mine is None and theirs is None:
            continue
        rows = [None if a is None else a.reshape(N_PATHS, steps, 28, 28) for a in (mine, theirs)]
        keep(f"interpolation_{role}", figures.interpolation_png(out / f"interp_{role}.png", *rows))
    keep("training_curves", figures.training_curves_png(out / "training_curves.png", histories_for_figures(student.values)))
    return written
