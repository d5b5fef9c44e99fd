"""The probe: what the grader takes out of a student's kernel, and how it measures models.

Nothing that is scored is computed in the student's process. After the student's cells, grader
code in the kernel (the *export*) hands back only plain data: each model's weights as tensors
(`state_dict`, an npz read without pickle) and plain values (best_beta, training histories). The
grader then loads those weights into its own copy of the architecture the handout prescribes
(`weights.py`) and runs them here, on fixed inputs the kernel never saw (`probe_models`), through
the very function it uses for its reference models. A patched numpy, a rewritten probe, a lookup
table or an object that lies about its type can change only the weights handed back, and weights
earn what they are worth in the prescribed architecture.

The student's functions (KL, reparameterization) are checked by `unitcheck.py` in a fresh process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import AssignmentConfig, ModelKind
from .exporting import VALUES_FILE, WEIGHTS_FILE, ExportTooLarge, read_npz_bounded
from .models import decode, encode_ae, encode_vae

MAX_VALUES_BYTES = 5_000_000


@dataclass
class ProbeInputs:
    """Fixed inputs, the same for every submission graded under the same parameters; they stay in
    the grader's process (the kernel never sees them)."""

    test_x: np.ndarray        # [n_test, 1, 28, 28] float32
    test_y: np.ndarray        # [n_test] int64
    prior_z: np.ndarray       # [n_samples, latent size]
    interp_start: np.ndarray  # [P, 1, 28, 28] test images of the interpolation's start class
    interp_end: np.ndarray    # [P, 1, 28, 28] test images of its end class
    interp_alpha: np.ndarray  # [S] from 0 to 1
    start_label: int = 0
    end_label: int = 0


def make_probe_inputs(
    config: AssignmentConfig, params: dict, test_x: torch.Tensor, test_y: torch.Tensor
) -> ProbeInputs:
    spec = config.probe
    nz = config.latent_size(params)
    rng = np.random.default_rng(spec.seed)
    x = test_x.numpy().astype(np.float32)
    y = test_y.numpy().astype(np.int64)
    chosen = np.sort(rng.choice(len(x), size=min(spec.n_test, len(x)), replace=False))
    roles = config.parameters.roles
    start_label, end_label = (int(params[name]) for name in (roles.interpolation_start, roles.interpolation_end))
    starts = _pick_label(rng, y, start_label, spec.n_interp_pairs)
    ends = _pick_label(rng, y, end_label, spec.n_interp_pairs)
    return ProbeInputs(
        test_x=x[chosen],
        test_y=y[chosen],
        prior_z=rng.standard_normal((spec.n_samples, nz)).astype(np.float32),
        interp_start=x[starts],
        interp_end=x[ends],
        interp_alpha=np.linspace(0.0, 1.0, spec.interp_steps, dtype=np.float32),
        start_label=start_label,
        end_label=end_label,
    )


def _pick_label(rng: np.random.Generator, labels: np.ndarray, label: int, count: int) -> np.ndarray:
    candidates = np.flatnonzero(labels == label)
    if len(candidates) == 0:
        raise ValueError(f"no test image has label {label}")
    return rng.choice(candidates, size=count, replace=len(candidates) < count)


# --- back in the grader ---------------------------------------------------------------------------


@dataclass
class KernelExport:
    """What the kernel handed back, bounded and validated: weights per role, plain values, and
    why a part is missing."""

    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)   # role -> name -> array
    values: dict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def load_export(workdir: Path, config: AssignmentConfig) -> KernelExport:
    """Read the export's files; anything missing, oversized or malformed becomes an error entry."""
    export = KernelExport()
    max_bytes = config.probe.max_export_mb << 20
    try:
        flat = read_npz_bounded(workdir / WEIGHTS_FILE, max_bytes)
        values_path = workdir / VALUES_FILE
        if values_path.is_symlink() or values_path.stat().st_size > MAX_VALUES_BYTES:
            raise ExportTooLarge(f"{VALUES_FILE} is larger than {MAX_VALUES_BYTES} bytes or not a file")
        parsed = json.loads(values_path.read_text())
        export.errors = {str(k): str(v)[:1000] for k, v in dict(parsed.get("errors", {})).items()}
        export.values = dict(parsed.get("values", {}))
    except Exception as exc:
        export.errors["probe"] = f"the kernel's export could not be read: {type(exc).__name__}: {exc}"
        return export
    for key, array in flat.items():
        role, _, name = key.partition("/")
        if role in config.model_names() and name:
            export.weights.setdefault(role, {})[name] = array
    return export


# --- measuring models (students' rebuilt ones and the reference's alike) ------------------------


@dataclass
class ModelOutputs:
    """One model's outputs on the fixed inputs (probe_model), as its kind's encode and decode
    returned them: measure.py checks their shapes (a rebuilt model has the handout's, but its
    weights may still give NaN)."""

    recon: np.ndarray                      # [n_test, ...] decode(mu) of the test images
    z: np.ndarray                          # [n_test, latent size] the code (a VAE's mu)
    samples: np.ndarray                    # [n_samples, ...] decode of the prior samples
    interp: np.ndarray                     # [pairs, steps, 784] decoded interpolation paths
    log_sigma: np.ndarray | None = None    # [n_test, latent size], VAEs only


@dataclass
class ProbeData:
    """Model outputs on the fixed inputs by role, unit-check outputs by check ("kl_unit",
    "reparam_unit"), errors by part, plain values."""

    models: dict[str, ModelOutputs] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)   # the unit checks' (grade.student_probe)
    errors: dict[str, str] = field(default_factory=dict)
    values: dict = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray | None:
        """A unit check's output array, None when the check produced none."""
        return self.arrays.get(name)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


@torch.no_grad()
def probe_model(model: torch.nn.Module, kind: ModelKind, inputs: ProbeInputs) -> ModelOutputs:
    """One model's outputs on the fixed inputs: reconstructions (decoding the code / mu), codes,
    prior samples, interpolation paths between codes."""
    model = model.eval()

    def code_of(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        if kind == "vae":
            return encode_vae(model, torch.from_numpy(x))
        return encode_ae(model, torch.from_numpy(x)), None

    mu, log_sigma = code_of(inputs.test_x)
    za, _ = code_of(inputs.interp_start)
    zb, _ = code_of(inputs.interp_end)
    alpha = torch.from_numpy(inputs.interp_alpha).view(1, -1, 1)
    path = za.unsqueeze(1) * (1 - alpha) + zb.unsqueeze(1) * alpha
    decoded = decode(model, path.reshape(-1, path.shape[-1]))
    return ModelOutputs(
        recon=_numpy(decode(model, mu)),
        z=_numpy(mu),
        log_sigma=None if log_sigma is None else _numpy(log_sigma),
        samples=_numpy(decode(model, torch.from_numpy(inputs.prior_z))),
        interp=_numpy(decoded).reshape(path.shape[0], path.shape[1], -1),
    )


def probe_models(models: dict[str, torch.nn.Module], config: AssignmentConfig, inputs: ProbeInputs) -> ProbeData:
    """Every model's outputs, in the grader's process, on models the grader built."""
    data = ProbeData()
    for role, model in models.items():
        try:
            data.models[role] = probe_model(model, config.model(role).kind, inputs)
        except Exception as exc:  # the weights may be valid yet make a model that fails
            data.errors[role] = f"{type(exc).__name__}: {exc}"[:500]
    return data
