"""The probe: grader-owned code that runs the student's models on fixed inputs.

It runs inside the student's kernel after their cells and hands back tensors only (an npz read
with allow_pickle=False and a JSON of plain values); every metric is computed later, in the
grader's process. The very same function runs in-process on the reference models, so student and
reference are treated identically.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import AssignmentConfig

INPUTS_FILE = "probe_inputs.npz"
OUTPUT_FILE = "probe.npz"
OUTPUT_JSON = "probe.json"
MODEL_ROLES = ("ae", "vae_beta0", "vae_beta10", "vae_tuned")


@dataclass
class ProbeInputs:
    """Fixed inputs, the same for every submission graded under the same parameters."""

    test_x: np.ndarray        # [n_test, 1, 28, 28] float32
    test_y: np.ndarray        # [n_test] int64
    prior_z: np.ndarray       # [n_samples, NZ]
    interp_start: np.ndarray  # [P, 1, 28, 28] test images of START_LABEL
    interp_end: np.ndarray    # [P, 1, 28, 28] test images of END_LABEL
    interp_alpha: np.ndarray  # [S] from 0 to 1
    kl_mu: np.ndarray         # [64, NZ]
    kl_log_sigma: np.ndarray
    reparam_mu: np.ndarray    # [n_reparam, NZ], every row the same
    reparam_log_sigma: np.ndarray

    def save(self, path: Path) -> str:
        """Write the npz and return its SHA-256 (the probe refuses a modified file)."""
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.__dict__)
        tmp.replace(path)
        path.chmod(0o644)
        return hashlib.sha256(path.read_bytes()).hexdigest()


def make_probe_inputs(
    config: AssignmentConfig, params: dict, test_x: torch.Tensor, test_y: torch.Tensor
) -> ProbeInputs:
    spec = config.probe
    nz = int(params["NZ"])
    rng = np.random.default_rng(spec.seed)
    x = test_x.numpy().astype(np.float32)
    y = test_y.numpy().astype(np.int64)
    chosen = np.sort(rng.choice(len(x), size=min(spec.n_test, len(x)), replace=False))
    starts = _pick_label(rng, y, int(params["START_LABEL"]), spec.n_interp_pairs)
    ends = _pick_label(rng, y, int(params["END_LABEL"]), spec.n_interp_pairs)
    reparam_mu = rng.normal(0.0, 1.0, size=nz).astype(np.float32)
    reparam_log_sigma = rng.uniform(-1.5, 0.5, size=nz).astype(np.float32)
    return ProbeInputs(
        test_x=x[chosen],
        test_y=y[chosen],
        prior_z=rng.standard_normal((spec.n_samples, nz)).astype(np.float32),
        interp_start=x[starts],
        interp_end=x[ends],
        interp_alpha=np.linspace(0.0, 1.0, spec.interp_steps, dtype=np.float32),
        kl_mu=rng.normal(0.0, 1.5, size=(64, nz)).astype(np.float32),
        kl_log_sigma=rng.uniform(-2.0, 1.0, size=(64, nz)).astype(np.float32),
        reparam_mu=np.tile(reparam_mu, (spec.n_reparam, 1)),
        reparam_log_sigma=np.tile(reparam_log_sigma, (spec.n_reparam, 1)),
    )


def _pick_label(rng: np.random.Generator, labels: np.ndarray, label: int, count: int) -> np.ndarray:
    candidates = np.flatnonzero(labels == label)
    if len(candidates) == 0:
        raise ValueError(f"no test image has label {label}")
    return rng.choice(candidates, size=count, replace=len(candidates) < count)


def run_probe(namespace: dict, spec: dict, workdir: str = ".") -> None:
    """Runs the models and functions named in `spec` on the fixed inputs; writes npz + json.

    Self-contained (its imports inside) because its source is sent to the student's kernel.
    Each part is tried on its own, so one broken model costs only what depends on it.
    """
    import hashlib
    import json
    import math
    import os

    import numpy as np
    import torch

    inputs_path = os.path.join(workdir, spec["inputs_file"])
    arrays, errors, values = {}, {}, {}
    with open(inputs_path, "rb") as handle:
        raw = handle.read()
    if spec.get("inputs_sha256") and hashlib.sha256(raw).hexdigest() != spec["inputs_sha256"]:
        errors["inputs"] = "the grader's probe inputs were modified during the run"
    else:
        data = dict(np.load(inputs_path, allow_pickle=False))

        def tensor(name, device="cpu"):
            return torch.from_numpy(data[name]).to(device)

        def numpy_of(t):
            if isinstance(t, (tuple, list)):
                raise TypeError(f"expected a tensor, got a {type(t).__name__} of {len(t)}")
            return t.detach().to("cpu", torch.float32).numpy()

        def attempt(key, fn):
            try:
                fn()
            except Exception as exc:  # the student's code may raise anything
                errors[key] = f"{type(exc).__name__}: {exc}"[:500]

        def probe_model(role, var):
            model = namespace.get(var)
            if model is None:
                raise NameError(f"name {var!r} is not defined")
            if hasattr(model, "eval"):
                model.eval()
            try:
                device = next(model.parameters()).device
            except Exception:
                device = torch.device("cpu")

            def code_of(x):
                encoded = model.encode(x)
                if role == "ae":
                    return encoded, None
                if not isinstance(encoded, (tuple, list)) or len(encoded) != 2:
                    raise TypeError("encode(x) should return (mu, log_sigma)")
                return encoded[0], encoded[1]

            with torch.no_grad():
                mu, log_sigma = code_of(tensor("test_x", device))
                arrays[f"{role}.recon"] = numpy_of(model.decode(mu))
                arrays[f"{role}.z"] = numpy_of(mu)
                if log_sigma is not None:
                    arrays[f"{role}.log_sigma"] = numpy_of(log_sigma)
                arrays[f"{role}.samples"] = numpy_of(model.decode(tensor("prior_z", device)))
                za, _ = code_of(tensor("interp_start", device))
                zb, _ = code_of(tensor("interp_end", device))
                alpha = tensor("interp_alpha", device).view(1, -1, 1)
                path = za.unsqueeze(1) * (1 - alpha) + zb.unsqueeze(1) * alpha
                decoded = model.decode(path.reshape(-1, path.shape[-1]))
                arrays[f"{role}.interp"] = numpy_of(decoded).reshape(path.shape[0], path.shape[1], -1)

        for role, var in spec["models"].items():
            attempt(role, lambda role=role, var=var: probe_model(role, var))

        def call(var, *args):
            fn = namespace.get(var)
            if fn is None:
                raise NameError(f"name {var!r} is not defined")
            return fn(*args)

        def probe_kl():
            with torch.no_grad():
                arrays["kl_unit"] = numpy_of(call(spec["kl_divergence"], tensor("kl_mu"), tensor("kl_log_sigma")))

        def probe_reparam():
            torch.manual_seed(spec["seed"])
            with torch.no_grad():
                arrays["reparam_unit"] = numpy_of(
                    call(spec["reparameterize"], tensor("reparam_mu"), tensor("reparam_log_sigma"))
                )

        def probe_rec_loss():
            x = tensor("test_x")[:64]
            with torch.no_grad():
                arrays["rec_loss_unit"] = numpy_of(call(spec["reconstruction_loss"], x.flip(0), x))

        attempt("kl_divergence", probe_kl)
        attempt("reparameterize", probe_reparam)
        attempt("reconstruction_loss", probe_rec_loss)

    def plain(value):
        """JSON-able copy of a history (numbers, lists, dicts), or raise."""
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, str):
            return value[:100]
        raise TypeError(f"unsupported {type(value).__name__}")

    beta = namespace.get(spec["best_beta"])
    try:
        values["best_beta"] = float(beta) if beta is not None else None
    except (TypeError, ValueError):
        errors["best_beta"] = f"{spec['best_beta']} is not a number: {beta!r}"[:200]
    for key in ("ae_history", "vae_histories"):
        if namespace.get(spec[key]) is not None:
            try:
                values[key] = plain(namespace[spec[key]])
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    np.savez(os.path.join(workdir, spec["output_file"]), **arrays)
    with open(os.path.join(workdir, spec["output_json"]), "w") as handle:
        json.dump({"errors": errors, "values": values}, handle)


def probe_spec(config: AssignmentConfig, inputs_sha256: str | None) -> dict:
    contract = config.contract
    return {
        "models": contract.model_names(),
        "kl_divergence": contract.kl_divergence,
        "reparameterize": contract.reparameterize,
        "reconstruction_loss": contract.reconstruction_loss,
        "best_beta": contract.best_beta,
        "ae_history": contract.ae_history,
        "vae_histories": contract.vae_histories,
        "seed": config.probe.seed,
        "inputs_file": INPUTS_FILE,
        "inputs_sha256": inputs_sha256,
        "output_file": OUTPUT_FILE,
        "output_json": OUTPUT_JSON,
    }


def probe_code(config: AssignmentConfig, inputs_sha256: str) -> str:
    """Source sent to the kernel: the probe function, then one call on the kernel's globals."""
    spec = json.dumps(probe_spec(config, inputs_sha256))
    return (
        inspect.getsource(run_probe)
        + f"\nrun_probe(globals(), __import__('json').loads({spec!r}))\ndel run_probe\n"
    )


@dataclass
class ProbeData:
    """What the probe handed back: arrays by name, errors by part, plain values."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    values: dict = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


MAX_PROBE_BYTES = 200_000_000


def load_probe(workdir: Path) -> ProbeData:
    """Read the probe's files without pickle; a missing or bad file becomes an error entry."""
    data = ProbeData()
    npz, js = workdir / OUTPUT_FILE, workdir / OUTPUT_JSON
    try:
        if npz.stat().st_size > MAX_PROBE_BYTES:
            raise ValueError(f"{npz.name} is larger than {MAX_PROBE_BYTES} bytes")
        with np.load(npz, allow_pickle=False) as loaded:
            data.arrays = {k: np.asarray(loaded[k], dtype=np.float32) for k in loaded.files}
        parsed = json.loads(js.read_text()[:5_000_000])
        data.errors = {str(k): str(v) for k, v in dict(parsed.get("errors", {})).items()}
        data.values = dict(parsed.get("values", {}))
    except Exception as exc:
        data.errors["probe"] = f"the probe's output could not be read: {type(exc).__name__}: {exc}"
    return data


def probe_in_process(namespace: dict, config: AssignmentConfig, inputs: ProbeInputs, workdir: Path) -> ProbeData:
    """Run the probe on models held by the grader (the reference), through the same code path."""
    workdir.mkdir(parents=True, exist_ok=True)
    inputs.save(workdir / INPUTS_FILE)
    run_probe(namespace, probe_spec(config, None), str(workdir))
    return load_probe(workdir)
