"""Reference models: the solution's AE and VAEs, trained by the grader at the student's parameters.

Every check compares a student's model with the reference trained on the same data, with the same
parameters, so a grade does not depend on the parameters a course picks. The set holds one model
per [[models]] autoencoder, the VAEs at the config's fixed betas and at every beta of its sweep;
the sweep beta whose prior samples are closest to the test set (Fréchet distance in the
classifier's feature space) stands for the tuned model, and the betas within
`good_beta_fid_factor` of it are the "good" ones. The models are the config's architecture
classes, trained by grader/models.py's loop.

Training is the expensive part, so a set is cached under a key of everything that changes it
(training parameters, betas, the training code, torch, the device kind, MNIST, the classifier)
and written atomically under a file lock: concurrent workers train a key once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import pickle
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import filelock
import torch
from torch import nn

from . import atomic, metrics, models, paths
from .config import AssignmentConfig, ModelKind, ParamValue
from .errors import ConfigError
from .models import TrainedModel, TrainSettings, decode, encode_ae, encode_vae, pick_device, train_model
from .records import ModelFigures
from .text import format_quantity

if TYPE_CHECKING:  # classifier.py is imported where it is used: building a set from the cache needs none of it
    from .classifier import MnistClassifier

Log = Callable[[str], None]

# Bump when what the cache holds, or how its figures are computed, changes meaning.
REFERENCE_FORMAT = 1
# Fréchet distances from fewer prior samples than this are too noisy to rank betas by.
MIN_PRIOR_SAMPLES = 1000
WEIGHTS_FILE = "models.pt"
META_FILE = "reference.json"
EVAL_BATCH = 2000
# CPU threads every reference model is trained at, whichever process trains it: a float sum split
# over another thread count rounds differently, and the reference's figures set the students' bands.
TRAINING_THREADS = 1


@contextlib.contextmanager
def _training_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- parameters ---------------------------------------------------------------------------------


def training_params(config: AssignmentConfig, params: dict[str, ParamValue]) -> dict[str, ParamValue]:
    """The training parameters (the config's parameters.roles training ones, by parameter name)
    out of a notebook parameter dict, checked; ConfigError if not. The others (the data folder,
    the interpolation's classes) do not change the trained models."""
    names = config.parameters.roles.training()
    missing = [name for name in names.values() if name not in params]
    if missing:
        raise ConfigError(f"reference training needs the parameter(s) {', '.join(missing)}")
    chosen = {name: params[name] for name in names.values()}
    for role in ("latent_size", "epochs", "batch_size", "seed"):
        name = names[role]
        if not isinstance(chosen[name], int) or isinstance(chosen[name], bool):
            raise ConfigError(f"parameter {name}: expected an integer, got {chosen[name]!r}")
        if role != "seed" and chosen[name] < 1:  # type: ignore[operator]
            raise ConfigError(f"parameter {name}: must be at least 1, got {chosen[name]}")
    name = names["learning_rate"]
    lr = chosen[name]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"parameter {name}: expected a positive number, got {lr!r}")
    chosen[name] = float(lr)
    name = names["train_subset"]
    subset = chosen[name]
    if subset is not None and (not isinstance(subset, int) or isinstance(subset, bool) or subset < 1):
        raise ConfigError(f"parameter {name}: expected None or a positive integer, got {subset!r}")
    return chosen


def reference_params(config: AssignmentConfig, params: dict[str, ParamValue]) -> TrainSettings:
    """grader.models.TrainSettings from the notebook parameters the config's roles name."""
    p = training_params(config, params)
    names = config.parameters.roles.training()
    return TrainSettings(nz=p[names["latent_size"]], epochs=p[names["epochs"]],  # type: ignore[arg-type]
                         batch_size=p[names["batch_size"]], lr=p[names["learning_rate"]],  # type: ignore[arg-type]
                         seed=p[names["seed"]])  # type: ignore[arg-type]


def train_subset_of(config: AssignmentConfig, params: dict[str, ParamValue]) -> int | None:
    """How many training images the models train on (None: all of them)."""
    return params[config.parameters.roles.train_subset]  # type: ignore[return-value]


def training_subset(images: torch.Tensor, train_subset: int | None) -> torch.Tensor:
    """The images the solution notebook trains on: the first `train_subset` of the training set
    (all of them when None). First-N keeps it deterministic and trivial to mirror in a notebook."""
    return images if train_subset is None else images[:train_subset]


def _kind_of(beta: float | None) -> ModelKind:
    """A reference run's model kind: the autoencoders train without a β."""
    return "ae" if beta is None else "vae"


def architecture_digest(config: AssignmentConfig) -> dict[str, str]:
    """Per model kind, the class the config names and the SHA-256 of the code that defines it."""
    from .config import architecture_source

    digests = {}
    for kind in ("ae", "vae"):
        target = config.architecture.target(kind)
        digests[kind] = f"{target} {_sha256_bytes(architecture_source(target, config.base_dir).encode())}"
    return digests


# --- cache key ----------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict values, in key order (a classifier given in memory)."""
    from .classifier import weights_digest

    return weights_digest(module)


def prior_sample_count(config: AssignmentConfig) -> int:
    return max(config.probe.n_samples, MIN_PRIOR_SAMPLES)


def reference_cache_key(
    config: AssignmentConfig,
    params: dict[str, ParamValue],
    device_kind: str | torch.device,
    classifier_digest: str | None = None,
) -> str:
    """SHA-256 (hex) of everything that changes the reference set.

    The training parameters, both beta lists, the source of grader/models.py (loss, training
    loop) and of the architecture's classes, torch's version, the device kind (cpu/cuda: kernels
    differ), the MNIST md5s, and what the figures depend on: the classifier (its configured
    sha256, or `classifier_digest` for one given in memory), the prior samples (count, seed) and
    the confidence threshold. Not the other parameters (data folder, interpolation classes):
    they do not change the models.
    """
    return _key_of(cache_key_inputs(config, params, device_kind, classifier_digest))


def _key_of(key_inputs: dict) -> str:
    return _sha256_bytes(json.dumps(key_inputs, sort_keys=True).encode())


def cache_key_inputs(
    config: AssignmentConfig,
    params: dict[str, ParamValue],
    device_kind: str | torch.device,
    classifier_digest: str | None = None,
) -> dict:
    """What reference_cache_key hashes (also stored in each entry, to tell why two keys differ)."""
    from .data import mnist_md5s

    kind = device_kind.type if isinstance(device_kind, torch.device) else torch.device(device_kind).type
    return {
        "format": REFERENCE_FORMAT,
        "training": training_params(config, params),
        "autoencoders": [m.role for m in config.models if m.kind == "ae"],
        "betas_fixed": list(config.fixed_betas().values()),
        "beta_sweep": [float(b) for b in config.reference.beta_sweep],
        "models_source": _sha256_bytes(Path(models.__file__).read_bytes()),
        "architecture": architecture_digest(config),
        "torch": torch.__version__,
        "training_threads": TRAINING_THREADS,
        "device": kind,
        "mnist": mnist_md5s(),
        "classifier": classifier_digest or config.classifier.sha256,
        "prior_samples": [prior_sample_count(config), config.probe.seed],
        "confidence": config.probe.accept_confidence,
    }


# --- the reference set --------------------------------------------------------------------------


@dataclass
class ReferenceSet:
    params: dict[str, ParamValue]             # the training parameters, by name
    key: str
    device: str                               # where it was trained: "cpu" / "cuda"
    models: dict[str, nn.Module]              # [[models]] role -> its reference (on the CPU)
    sweep: dict[float, nn.Module]             # every sweep beta -> its VAE
    best_beta: float                          # sweep beta with the lowest sample Fréchet distance
    good_betas: list[float]                   # sweep betas within good_beta_fid_factor x the best
    histories: dict                           # {"ae": [...], "vae": {beta: [...]}} per epoch rec / kl
    figures: dict[str, ModelFigures]          # role -> figures on the 10 000 test images
    sweep_figures: dict[float, ModelFigures]  # sweep beta -> figures
    mean_image: torch.Tensor                  # [1, 28, 28] mean training image
    mean_image_mse: float                     # MSE per pixel of predicting it for every test image
    betas: dict[str, float | None]            # role -> beta (None for an autoencoder)
    settings: TrainSettings                   # how each model was trained
    train_subset: int | None                  # on the first this many training images (None: all)
    builders: dict[ModelKind, Callable[[int], nn.Module]]   # the architecture's class per model kind
    tuned_role: str | None = None             # the model whose reference follows the student's β
    train_seconds: dict[str, float] = field(default_factory=dict)   # run name (role / "beta=<b>") -> seconds
    path: Path | None = None                  # the cache entry
    cache_hit: bool = False
    # VAEs at a student's β read from entry/extra/ once, not on every lookup (a job looks one up
    # several times: its probe, its measurement, its figures).
    _extras: dict[float, nn.Module] = field(default_factory=dict, repr=False)

    def vae_at(self, beta: float | None) -> tuple[float, nn.Module]:
        """The sweep VAE nearest to `beta` on a log scale, with its beta: the fair comparison for
        a student's tuned VAE. None or a non-finite beta gives the best one; beta <= 0 the smallest."""
        if beta is None or not math.isfinite(beta):
            return self.best_beta, self.sweep[self.best_beta]
        if beta <= 0:
            nearest = min(self.sweep)
        else:
            nearest = min(self.sweep, key=lambda b: (abs(math.log(b / beta)) if b > 0 else math.inf, b))
        return nearest, self.sweep[nearest]

    def _exact(self, beta: float | None) -> bool:
        """Whether a student's β gets a reference trained at exactly that β: a finite β >= 0 of a
        set kept in the cache (anything else is compared with `vae_at`)."""
        return beta is not None and math.isfinite(beta) and beta >= 0 and self.path is not None

    def _extra_file(self, beta: float) -> Path:
        assert self.path is not None
        return self.path / "extra" / f"{_beta_name(beta)}.pt"

    def held_vae(self, beta: float) -> tuple[float, nn.Module] | None:
        """The VAE at exactly `beta` the set holds: one of its own betas, or one trained for an
        earlier student and kept in the cache entry (entry/extra/); None otherwise. Never trains."""
        held = {**self.sweep, **{b: self.models[r] for r, b in self.betas.items() if b is not None}}
        for known, model in held.items():
            if math.isclose(known, beta, rel_tol=1e-9, abs_tol=1e-12):
                return known, model
        if self.path is None:
            return None
        if beta in self._extras:
            return beta, self._extras[beta]
        model = self.builders["vae"](self.settings.nz)
        try:
            model.load_state_dict(torch.load(self._extra_file(beta), map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError):
            return None  # not trained yet, or a damaged file (train_vae_at trains it again)
        self._extras[beta] = model.eval()
        return beta, model

    def vae_for(self, beta: float | None) -> tuple[float, nn.Module]:
        """The reference VAE a student's tuned VAE at `beta` is compared with, and its β: the one
        at exactly `beta` (train_vae_at must have made it when the set does not hold it:
        LookupError otherwise); for a missing, non-finite or negative β, `vae_at`."""
        if beta is None or not self._exact(beta):
            return self.vae_at(beta)
        found = self.held_vae(beta)
        if found is None:
            raise LookupError(f"no reference VAE at beta={beta:g}: train_vae_at({beta:g}) is the step that makes it")
        return found

    def train_vae_at(self, beta: float | None, data_dir: Path | None = None, log: Log = print) -> bool:
        """The run's step for a student's β: train the reference VAE at exactly `beta` with the
        set's parameters, unless the set holds one (then nothing happens), and keep it in the
        cache entry. Once per β and set, whatever the workers: they take the entry's lock and
        look again. Returns whether this call trained."""
        if beta is None or not self._exact(beta) or self.held_vae(beta) is not None:
            return False
        extra = self._extra_file(beta)
        extra.parent.mkdir(exist_ok=True)
        assert self.path is not None
        with filelock.FileLock(self.path / "extra.lock"):
            if self.held_vae(beta) is not None:   # another worker trained it meanwhile
                return False
            from .data import load_mnist

            started = time.perf_counter()
            train_x = training_subset(load_mnist(train=True, data_dir=data_dir)[0], self.train_subset)
            with _training_threads():
                trained = train_model(train_x, self.settings, beta, pick_device(self.device), self.builders["vae"])
            buffer = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in trained.model.state_dict().items()}, buffer)
            atomic.write_bytes(extra, buffer.getvalue())
            log(f"reference: trained a VAE at beta={beta:g} in {time.perf_counter() - started:.1f} s")
            return True


def _beta_name(beta: float) -> str:
    return f"beta={float(beta)!r}"


def _all_betas(config: AssignmentConfig) -> list[float]:
    """Fixed betas then sweep betas, each once."""
    betas: list[float] = []
    for beta in [*config.fixed_betas().values(), *config.reference.beta_sweep]:
        if float(beta) not in betas:
            betas.append(float(beta))
    return betas


def _runs(config: AssignmentConfig) -> list[tuple[str, float | None]]:
    """(name, beta) of every model the reference trains: the autoencoders by role, then a VAE per β."""
    return ([(m.role, None) for m in config.models if m.kind == "ae"]
            + [(_beta_name(b), b) for b in _all_betas(config)])


def select_betas(config: AssignmentConfig, fids: dict[float, float | None]) -> tuple[float, list[float]]:
    """(best beta, good betas) of the sweep from its Fréchet distances; missing or NaN = worst."""
    sweep = [float(b) for b in config.reference.beta_sweep]
    score = {b: _rankable(fids.get(b)) for b in sweep}
    best = min(sweep, key=lambda b: score[b])     # ties: the first listed
    if not math.isfinite(score[best]):
        return best, []
    limit = config.reference.good_beta_fid_factor * score[best]
    return best, sorted(b for b in sweep if score[b] <= limit)


def _rankable(fid: float | None) -> float:
    """A Fréchet distance to rank by: a missing or NaN one ranks last."""
    return fid if fid is not None and math.isfinite(fid) else math.inf


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class _Evaluation:
    """Fixed inputs every model is measured on."""

    test_x: torch.Tensor
    test_stats: metrics.FeatureStats
    prior_z: torch.Tensor
    classifier: MnistClassifier
    device: torch.device
    confidence: float                 # a sample counts as confident from this max probability


def feature_stats_of_test_set(classifier: MnistClassifier, test_x: torch.Tensor) -> metrics.FeatureStats:
    """Classifier feature statistics of the test images: the Fréchet target, computed once per
    classifier and image set and kept in the per-user cache (classifying 10 000 images is most
    of a build's evaluation time, and was most of every grading run's start, on the CPU)."""
    from .classifier import feature_stats_cached

    return feature_stats_cached(classifier, test_x)


def _in_batches(fn, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(x[i : i + EVAL_BATCH].to(device)).cpu() for i in range(0, len(x), EVAL_BATCH)])


@torch.no_grad()
def _model_figures(model: nn.Module, kind: ModelKind, ev: _Evaluation) -> ModelFigures:
    """Test MSE (decoding the mean code), KL and ELBO, and the prior samples' quality, through the
    functions that measure a student's model (grader/measure.py), on the full test set and the
    set's prior samples. Here the models run in batches on the build's device, and a diverged
    model (samples not finite) gets no sample figures: NaN figures become None (_finite)."""
    from .measure import measure_samples, reconstruction_figures

    model = model.to(ev.device).eval()
    if kind == "vae":
        codes = _in_batches(lambda x: torch.cat(encode_vae(model, x), dim=1), ev.test_x, ev.device)
        mu, log_sigma = codes.chunk(2, dim=1)
    else:
        mu, log_sigma = _in_batches(lambda x: encode_ae(model, x), ev.test_x, ev.device), None
    recon = _in_batches(lambda z: decode(model, z), mu, ev.device)
    figures = reconstruction_figures(recon, ev.test_x, mu, log_sigma)
    samples = _in_batches(lambda z: decode(model, z), ev.prior_z, ev.device)
    model.cpu()
    if torch.isfinite(samples).all():
        measure_samples(figures, samples, ev.classifier, ev.test_stats, ev.confidence)
    return _finite(figures)


def _finite(figures: ModelFigures) -> ModelFigures:
    """NaN / inf (a diverged model) become None: "not measurable", and valid JSON."""
    return ModelFigures(**{k: v if v is None or math.isfinite(v) else None for k, v in figures.model_dump().items()})


# --- the cache ----------------------------------------------------------------------------------


class _CorruptEntry(Exception):
    pass


def _load_entry(entry: Path, key: str, config: AssignmentConfig) -> ReferenceSet:
    """The set stored in `entry`; _CorruptEntry says why it cannot be used."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
        raw = (entry / WEIGHTS_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise _CorruptEntry(f"unreadable ({exc})") from exc
    if meta.get("format") != REFERENCE_FORMAT or meta.get("key") != key:
        raise _CorruptEntry("written for another key or format")
    if _sha256_bytes(raw) != meta.get("weights_sha256"):
        raise _CorruptEntry(f"{WEIGHTS_FILE} does not match its recorded sha256")
    try:
        states = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        nz = meta["params"][config.parameters.roles.latent_size]
        loaded: dict[str, nn.Module] = {}
        for name, info in meta["models"].items():
            model = config.model_class(_kind_of(info["beta"]))(nz)
            model.load_state_dict(states[name])
            loaded[name] = model.eval()
        return _assemble(
            config, key, meta, loaded, states["mean_image"], path=entry, cache_hit=True
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise _CorruptEntry(f"inconsistent contents ({type(exc).__name__}: {exc})") from exc


def _figures_from_json(data: dict) -> ModelFigures:
    return ModelFigures.model_validate(data)


def _assemble(
    config: AssignmentConfig,
    key: str,
    meta: dict,
    by_name: dict[str, nn.Module],
    mean_image: torch.Tensor,
    path: Path | None,
    cache_hit: bool,
) -> ReferenceSet:
    """A ReferenceSet from stored models (by run name: an autoencoder's role, "beta=<b>") and
    metadata."""
    figures_by_name = {name: _figures_from_json(f) for name, f in meta["figures"].items()}
    sweep_betas = [float(b) for b in config.reference.beta_sweep]
    fids = {b: figures_by_name[_beta_name(b)].sample_fid for b in sweep_betas}
    best, good = select_betas(config, fids)
    betas: dict[str, float | None] = {m.role: best if m.tuned else m.fixed_beta for m in config.models}
    run_of = {m.role: m.role if m.kind == "ae" else _beta_name(betas[m.role]) for m in config.models}  # type: ignore[arg-type]
    role_models = {role: by_name[run] for role, run in run_of.items()}
    role_figures = {role: figures_by_name[run] for role, run in run_of.items()}
    for model in by_name.values():
        model.requires_grad_(False)
    tuned = config.tuned_model
    return ReferenceSet(
        params={name: meta["params"][name] for name in config.parameters.roles.training().values()},
        key=key,
        device=meta["device"],
        models=role_models,
        sweep={b: by_name[_beta_name(b)] for b in sweep_betas},
        best_beta=best,
        good_betas=good,
        histories={
            "ae": meta["histories"]["ae"],
            "vae": {float(b): h for b, h in meta["histories"]["vae"].items()},
        },
        figures=role_figures,
        sweep_figures={b: figures_by_name[_beta_name(b)] for b in sweep_betas},
        mean_image=mean_image,
        mean_image_mse=float(meta["mean_image_mse"]),
        betas=betas,
        settings=reference_params(config, meta["params"]),
        train_subset=train_subset_of(config, meta["params"]),
        builders={kind: config.model_class(kind) for kind in ("ae", "vae")},
        tuned_role=tuned.role if tuned is not None else None,
        train_seconds=dict(meta.get("train_seconds", {})),
        path=path,
        cache_hit=cache_hit,
    )


def _save_entry(entry: Path, meta: dict, states: Mapping[str, dict[str, torch.Tensor] | torch.Tensor]) -> None:
    """Write the entry as one folder: readers see all of it or none."""
    buffer = io.BytesIO()
    torch.save(states, buffer)
    raw = buffer.getvalue()
    meta = {**meta, "weights_sha256": _sha256_bytes(raw)}
    atomic.write_directory(entry, {WEIGHTS_FILE: raw,
                                   META_FILE: json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")})


# --- building -----------------------------------------------------------------------------------


def _train_and_measure(
    config: AssignmentConfig,
    params: dict[str, ParamValue],
    key_inputs: dict,
    device: torch.device,
    classifier: MnistClassifier,
    data_dir: Path | None,
    log: Log,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict[str, nn.Module], torch.Tensor]:
    """(metadata, state dicts and models by run name, the mean training image) of a new set."""
    from .data import load_mnist

    settings = reference_params(config, params)
    train_x, _ = load_mnist(train=True, data_dir=data_dir)
    test_x, _ = load_mnist(train=False, data_dir=data_dir)
    train_x = training_subset(train_x, train_subset_of(config, params))
    runs = _runs(config)
    log(
        f"reference: training {len(runs)} models on {len(train_x)} images, {settings.epochs} epochs, "
        f"on {device.type}"
    )
    trained: dict[str, TrainedModel] = {}
    seconds: dict[str, float] = {}
    for name, beta in runs:
        started = time.perf_counter()
        trained[name] = train_model(train_x, settings, beta, device, config.model_class(_kind_of(beta)))
        seconds[name] = time.perf_counter() - started
        last = trained[name].history[-1] if trained[name].history else {}
        log(f"reference: {name}: {seconds[name]:.1f} s, last epoch rec {last.get('rec', float('nan')):.2f} "
            f"kl {last.get('kl', float('nan')):.2f}")

    started = time.perf_counter()
    classifier = classifier.to(device).eval()
    generator = torch.Generator().manual_seed(config.probe.seed)
    ev = _Evaluation(
        test_x=test_x,
        test_stats=feature_stats_of_test_set(classifier, test_x),
        prior_z=torch.randn(prior_sample_count(config), settings.nz, generator=generator),
        classifier=classifier,
        device=device,
        confidence=config.probe.accept_confidence,
    )
    figures = {name: _model_figures(t.model, _kind_of(t.beta), ev) for name, t in trained.items()}
    mean_image = train_x.mean(dim=0)
    mean_image_mse = metrics.mse_per_pixel(mean_image.expand_as(test_x), test_x)
    log(f"reference: measured in {time.perf_counter() - started:.1f} s")

    meta = {
        "format": REFERENCE_FORMAT,
        "key": _key_of(key_inputs),
        "key_inputs": key_inputs,
        "params": training_params(config, params),
        "device": device.type,
        "torch": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "betas_fixed": list(config.fixed_betas().values()),
        "beta_sweep": [float(b) for b in config.reference.beta_sweep],
        "models": {name: {"beta": t.beta} for name, t in trained.items()},
        "histories": {  # by kind, as the figures draw a notebook's: the (first) autoencoder's, the VAEs' by β
            "ae": next((t.history for t in trained.values() if t.beta is None), None),
            "vae": {repr(t.beta): t.history for t in trained.values() if t.beta is not None},
        },
        "figures": {name: f.model_dump() for name, f in figures.items()},
        "mean_image_mse": mean_image_mse,
        "train_seconds": seconds,
    }
    states = {name: {k: v.detach().cpu() for k, v in t.model.state_dict().items()} for name, t in trained.items()}
    return meta, states, {name: t.model for name, t in trained.items()}, mean_image.clone()


def build_reference(
    config: AssignmentConfig,
    params: dict[str, ParamValue],
    device: torch.device | str | None = None,
    cache_dir: Path | str | None = None,
    log: Log = print,
    *,
    data_dir: Path | None = None,
    classifier: MnistClassifier | None = None,
) -> ReferenceSet:
    """The reference set for `params`, from the cache or trained (and cached) now.

    device: None picks CUDA when available, else the CPU. cache_dir: the folder of entries,
    default <grader cache>/reference; each entry is <cache_dir>/<key>/. classifier: the judge of
    samples, default the configured (hash-checked) one. A corrupt entry is retrained.
    """
    device = pick_device(str(device) if device is not None else None)
    digest = state_digest(classifier) if classifier is not None else None
    key_inputs = cache_key_inputs(config, params, device, digest)
    key = _key_of(key_inputs)
    root = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "reference"
    entry = root / key

    def cached(report: bool) -> ReferenceSet | None:
        """The entry, or None; report: say that a corrupt one is retrained (asked under the lock)."""
        if not entry.exists():
            return None
        try:
            return _load_entry(entry, key, config)
        except _CorruptEntry as exc:
            if report:
                log(f"reference: cache entry {entry} is corrupt: {exc}; retraining it")
            return None

    def train() -> ReferenceSet:
        shutil.rmtree(entry, ignore_errors=True)
        judge = classifier
        if judge is None:
            from .classifier import load_configured_classifier

            judge = load_configured_classifier(config)
        with _training_threads():
            meta, states, by_name, mean_image = _train_and_measure(config, params, key_inputs, device, judge, data_dir, log)
        _save_entry(entry, meta, {**states, "mean_image": mean_image})   # as _load_entry reads it
        log(f"reference: saved {entry}")
        for model in by_name.values():
            model.eval()
        return _assemble(config, key, meta, by_name, mean_image, path=entry, cache_hit=False)

    return paths.compute_once(root / f"{key}.lock", cached, train)


# --- presentation -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return format_quantity(value, spec=spec, missing="-", non_finite="-")


def _param_text(value: ParamValue) -> str:
    """A training parameter as the table's title shows it (None: every training image)."""
    if value is None:
        return "all"
    return format(value, "g") if isinstance(value, float) else str(value)


def format_reference_table(ref: ReferenceSet) -> str:
    """Plain-text table of each reference model's test and sample-quality figures."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    shown = " ".join(f"{name}={_param_text(value)}" for name, value in ref.params.items())
    title = f"Reference models: {shown} ({ref.device}, {'cached' if ref.cache_hit else 'trained'})"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("model", "beta", "MSE/pixel", "KL", "ELBO", "sample conf", "coverage", "FID", "note", "train s"):
        table.add_column(column, justify="left" if column in ("model", "note") else "right")

    def row(label: str, name: str, beta: float | None, figures: ModelFigures, note: str = "") -> None:
        table.add_row(
            label,
            "-" if beta is None else f"{beta:g}",
            _fmt(figures.mse, ".4f"),
            _fmt(figures.kl, ".2f"),
            _fmt(figures.elbo, ".2f"),
            _fmt(figures.sample_confidence, ".3f"),
            _fmt(figures.sample_coverage, ".1f"),
            _fmt(figures.sample_fid, ".2f"),
            note,
            _fmt(ref.train_seconds.get(name), ".1f"),
        )

    for role, beta in ref.betas.items():
        if role != ref.tuned_role:
            row(role, role if beta is None else _beta_name(beta), beta, ref.figures[role])
    for beta, figures in ref.sweep_figures.items():
        note = f"best: {ref.tuned_role}" if beta == ref.best_beta else ("good" if beta in ref.good_betas else "")
        row("sweep", _beta_name(beta), beta, figures, note)
    table.add_row("mean image", "-", _fmt(ref.mean_image_mse, ".4f"), *["-"] * 5, "floor", "")
    text = io.StringIO()
    console = Console(file=text, width=120, color_system=None, force_terminal=False)
    console.print(table)
    total = sum(ref.train_seconds.values())
    footer = f"best beta {ref.best_beta:g}; good betas {', '.join(f'{b:g}' for b in ref.good_betas) or 'none'}"
    footer += f"; training {total:.0f} s; key {ref.key[:12]}"
    return text.getvalue().rstrip() + "\n" + footer + "\n"
