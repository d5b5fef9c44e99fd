"""The PNGs a report shows, made from the probe's model outputs (student) next to the reference's.

Samples are captioned with the classifier's verdicts that measuring them produced (the
student's in the measurement, the reference's once per β in the run); only the samples shown of
a model that could not be measured are classified here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from . import figures
from .exporting import history_key
from .probe import ProbeData
from .records import FigureKind, FigureRef, FigureSide, SampleCaptions, TrainingHistories

N_RECON = 10   # test images shown reconstructed
N_SAMPLES = 20  # prior samples shown per model
N_PATHS = 3    # interpolation paths shown per model


def _images(array: np.ndarray | None, count: int) -> np.ndarray | None:
    if array is None or array.size % 784 or array.size // 784 < count:
        return None
    return array.reshape(-1, 28, 28)[:count]


def _output(probe: ProbeData, role: str, name: Literal["recon", "samples", "interp"]) -> np.ndarray | None:
    """One of a model's outputs; None where the probe could not run the model."""
    outputs = probe.models.get(role)
    return None if outputs is None else getattr(outputs, name)


def histories_for_figures(values: dict) -> TrainingHistories:
    """The histories the kernel kept, as the record that result.json holds and the curves draw."""
    return TrainingHistories.model_validate(_kernel_histories(values))


def _kernel_histories(values: dict) -> dict:
    """The kernel's training records by model kind (an autoencoder's list, the VAEs' dict by β)."""
    return {"ae": values.get(history_key("ae")), "vae": values.get(history_key("vae")) or {}}


def _captions(captions: dict, role: str, samples: np.ndarray, judge) -> tuple[np.ndarray, np.ndarray]:
    """(labels, confidences) of the samples shown: from measuring them, or, for a model that
    could not be measured (e.g. some samples not finite), from classifying just those shown."""
    shown = len(samples)
    found = captions.get(role)
    if found is None or len(found.labels) < shown:
        found = SampleCaptions.of(judge.judge(samples.reshape(-1, 1, 28, 28).astype(np.float32)).probs)
    return found.labels[:shown], found.confidences[:shown]


def write_figures(out: Path, ctx, student: ProbeData, reference: ProbeData, measurement) -> list[FigureRef]:
    """Write every figure that can be drawn; returns their records, files in `out`."""
    written: list[FigureRef] = []

    def keep(kind: FigureKind, role: str | None, path: Path | None, side: FigureSide | None = None) -> None:
        if path is not None:
            written.append(FigureRef(kind=kind, role=role, side=side, file=Path(path).name))

    captions = {"student": measurement.captions,
                "reference": ctx.reference_measurement(measurement.best_beta).captions}
    originals = ctx.inputs.test_x[:N_RECON].reshape(-1, 28, 28)
    sides: tuple[tuple[FigureSide, ProbeData], ...] = (("student", student), ("reference", reference))
    for role in ctx.config.model_names():
        mine = _images(_output(student, role, "recon"), N_RECON)
        theirs = _images(_output(reference, role, "recon"), N_RECON)
        keep("reconstructions", role, figures.reconstructions_png(out / f"recon_{role}.png", originals, mine, theirs))
        for side, probe in sides:
            samples = _images(_output(probe, role, "samples"), N_SAMPLES)
            if samples is None:
                continue
            verdicts = _captions(captions[side], role, samples, ctx.judge)
            keep("samples", role, figures.samples_png(out / f"samples_{role}_{side}.png", samples, *verdicts), side)
    steps = len(ctx.inputs.interp_alpha)
    interpolated = [role for check in ctx.config.checks if check.kind == "interpolation" for role in check.models]
    for role in dict.fromkeys(interpolated):
        mine = _images(_output(student, role, "interp"), N_PATHS * steps)
        theirs = _images(_output(reference, role, "interp"), N_PATHS * steps)
        if mine is None and theirs is None:
            continue
        rows = [None if a is None else a.reshape(N_PATHS, steps, 28, 28) for a in (mine, theirs)]
        keep("interpolation", role, figures.interpolation_png(out / f"interp_{role}.png", *rows))
    keep("training_curves", None,
         figures.training_curves_png(out / "training_curves.png", histories_for_figures(student.values).model_dump()))
    return written
