"""Measure: metrics of the student's and the reference's models, from their outputs.

Everything here runs in the grader's process on outputs of models the grader built and ran
itself (probe.probe_models; the student's from their weights) and on the unit checker's arrays;
the classifier judges samples and interpolations, an image bank spots memorised samples. A part the
probe could not produce is reported in `StudentMeasurement.missing` (grader/records.py) with the
reason, and costs only the checks that depend on it.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .classifier import ClassifierOutput, MnistClassifier, classify
from .config import AssignmentConfig
from .probe import ProbeData, ProbeInputs
from .records import (
    KLUnitFigures,
    Metrics,
    ModelFigures,
    ReparamUnitFigures,
    SampleCaptions,
    StudentMeasurement,
)
from .unitcheck import UnitInputs

IMAGE_SIZE = 28 * 28
MEASURE_THREADS = 2
Batch = np.ndarray | torch.Tensor   # what the metrics take: the probe's arrays, the reference's tensors


class ShapeError(ValueError):
    """An array from the probe does not have the contract's shape."""


@dataclass
class Judge:
    """The classifier and the real test images' feature statistics (the Fréchet target)."""

    classifier: MnistClassifier
    test_stats: metrics.FeatureStats
    accept_confidence: float                # an image is a digit from this top-class probability
    memorised_distance: float               # a sample this close to a bank image is a copy
    bank: metrics.ImageBank | None = None   # every MNIST image, for spotting memorised samples

    @classmethod
    def build(cls, classifier: MnistClassifier, test_images: torch.Tensor, accept_confidence: float,
              memorised_distance: float, bank: metrics.ImageBank | None = None) -> Judge:
        from .reference import (
            feature_stats_of_test_set,  # shared with reference building
        )

        return cls(classifier, feature_stats_of_test_set(classifier, test_images), accept_confidence,
                   memorised_distance, bank)

    def judge(self, images: np.ndarray) -> ClassifierOutput:
        return classify(self.classifier, torch.from_numpy(images).reshape(-1, 1, 28, 28))


BANK_FORMAT = 1   # bump when pooled() changes: the cached bank is its output


def mnist_image_bank(data_dir: Path) -> metrics.ImageBank:
    """Every MNIST image, training and test set, pooled as the memorisation search compares them:
    from the per-user cache (<cache>/image_bank/<key>.npy, 55 MB), else pooled from the data and
    cached, under a file lock so that concurrent workers pool once. Worth it for every worker's
    start: loading the 60 000 training images, joining them to the test set's and pooling took
    1.5-3 s of CPU on one thread, reading the cached array about 0.1 s. The key is the files'
    canonical md5s (the data module checks every file against them before anyone reads it) and
    torch's version (the pooling's last bits are torch's, as in the features cache)."""
    from . import atomic, paths
    from .data import load_mnist, mnist_md5s
    from .metrics.memorisation import pooled as pool_images

    key = hashlib.sha256(json.dumps([BANK_FORMAT, torch.__version__, sorted(mnist_md5s().items())]).encode()).hexdigest()[:24]
    root = paths.cache_dir() / "image_bank"
    path = root / f"{key}.npy"

    def read(_locked: bool) -> metrics.ImageBank | None:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None   # missing or damaged: pooled again
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != IMAGE_SIZE // 4 or not len(array):
            return None
        return metrics.ImageBank.from_pooled(torch.from_numpy(array))

    def make() -> metrics.ImageBank:
        train_images, _ = load_mnist(train=True, data_dir=data_dir)
        test_images, _ = load_mnist(train=False, data_dir=data_dir)
        pooled = pool_images(torch.cat([train_images, test_images]))
        buffer = io.BytesIO()
        np.save(buffer, pooled.numpy())
        atomic.write_bytes(path, buffer.getvalue())
        return metrics.ImageBank.from_pooled(pooled)

    return paths.compute_once(root / f"{key}.lock", read, make)


def as_images(array: np.ndarray | None, rows: int, what: str) -> np.ndarray:
    """[rows, 1, 28, 28] float32 from what decode returned ([B,1,28,28] or [B,784])."""
    if array is None:
        raise ShapeError(f"{what} was not produced")
    if array.size != rows * IMAGE_SIZE:
        raise ShapeError(f"{what} has shape {list(array.shape)}, expected [{rows}, 1, 28, 28] or [{rows}, 784]")
    images = array.reshape(rows, 1, 28, 28).astype(np.float32)
    if not np.isfinite(images).all():
        raise ShapeError(f"{what} contains NaN or infinite values")
    return images


# --- the figures a student's model and a reference model share ---------------------------------
# One path for both: measure_model (a student's rebuilt model, or the reference's at a student's
# β, on the probe's inputs) and reference._model_figures (every reference model on the full test
# set, which ranks the β sweep) call these.


def reconstruction_figures(recon: Batch, x: Batch, mu: Batch, log_sigma: Batch | None) -> ModelFigures:
    """MSE per pixel of the reconstructions `recon` of `x`; with `log_sigma` (a VAE) the KL to the
    prior and the ELBO per image, averaged, where `recon` decodes the mean code `mu`."""
    figures = ModelFigures(mse=metrics.mse_per_pixel(recon, x))
    if log_sigma is not None:
        figures.kl = float(metrics.kl_to_standard_normal(mu, log_sigma).mean())
        figures.elbo = float(metrics.elbo_per_image(recon, x, mu, log_sigma).mean())
    return figures


def measure_samples(figures: ModelFigures, samples: torch.Tensor, classifier: MnistClassifier,
                    test_stats: metrics.FeatureStats, accept_confidence: float) -> ClassifierOutput:
    """Sets the prior samples' figures in `figures`: mean confidence and class coverage from the
    classifier's probabilities, the Fréchet distance of its features to the test set's; returns
    that classification (the samples' captions, once)."""
    judged = classify(classifier, samples)
    quality = metrics.sample_quality(judged.probs, confidence=accept_confidence)
    figures.sample_confidence = quality.mean_confidence
    figures.sample_coverage = quality.coverage
    figures.sample_fid = metrics.frechet_distance_from_stats(metrics.feature_stats(judged.features), test_stats)
    return judged


def endpoint_share(probs: torch.Tensor, pairs: int, steps: int, start_label: int, end_label: int) -> float:
    """Share of interpolation paths whose two ends decode to digits of their own classes: a path
    between blobs that the classifier calls anything is no interpolation between two digits."""
    labels = probs.reshape(pairs, steps, -1).argmax(dim=2)
    return ((labels[:, 0] == start_label) & (labels[:, -1] == end_label)).double().mean().item()


@dataclass
class ModelMeasurement:
    figures: ModelFigures
    captions: SampleCaptions


def measure_model(probe: ProbeData, role: str, inputs: ProbeInputs, judge: Judge,
                  check_memorisation: bool = False) -> ModelMeasurement:
    """Every figure of one model, and its samples' captions; raises ShapeError naming the first
    array that is wrong. Each image set is classified once."""
    n_test = len(inputs.test_x)
    outputs = probe.models.get(role)
    if outputs is None:
        raise ShapeError(f"{role}.decode(encode(x)) was not produced")
    recon = as_images(outputs.recon, n_test, f"{role}.decode(encode(x))")
    figures = reconstruction_figures(recon, inputs.test_x, outputs.z, outputs.log_sigma)
    samples = as_images(outputs.samples, len(inputs.prior_z), f"{role}.decode(z) of prior samples")
    judged = measure_samples(figures, torch.from_numpy(samples), judge.classifier, judge.test_stats,
                             judge.accept_confidence)
    if check_memorisation and judge.bank is not None:
        figures.sample_memorised = metrics.memorised_share(samples, judge.bank, judge.memorised_distance)
    pairs, steps = len(inputs.interp_start), len(inputs.interp_alpha)
    paths = as_images(outputs.interp, pairs * steps, f"{role} interpolation")
    probs = judge.judge(paths).probs
    interp = metrics.interpolation_quality(paths.reshape(pairs, steps, 1, 28, 28), probs, judge.accept_confidence)
    figures.interp_accept, figures.interp_smoothness = interp.accept, interp.smoothness
    figures.interp_endpoints = endpoint_share(probs, pairs, steps, inputs.start_label, inputs.end_label)
    return ModelMeasurement(figures, SampleCaptions.of(judged.probs))


def model_figures(probe: ProbeData, role: str, inputs: ProbeInputs, judge: Judge,
                  check_memorisation: bool = False) -> ModelFigures:
    """Every figure of one model; raises ShapeError naming the first array that is wrong."""
    return measure_model(probe, role, inputs, judge, check_memorisation).figures


def _sample_roles(config: AssignmentConfig) -> set[str]:
    """The models whose samples earn points: only those are searched for memorised images."""
    return {c.model for c in config.checks if c.kind == "sample_quality"}


def all_model_figures(probe: ProbeData, inputs: ProbeInputs, judge: Judge, config: AssignmentConfig,
                      check_memorisation: bool = True, captions: dict[str, SampleCaptions] | None = None,
                      ) -> tuple[dict[str, ModelFigures], dict[str, str]]:
    """Every model's figures and why a model could not be measured; each measured model's
    sample captions go into `captions` when it is given."""
    figures, missing = {}, {}
    memorisation_roles = _sample_roles(config) if check_memorisation else set()
    roles = [role for role in config.model_names() if role not in probe.errors]

    def measured(role: str) -> ModelMeasurement | str:
        try:
            return measure_model(probe, role, inputs, judge, role in memorisation_roles)
        except (ShapeError, ValueError) as exc:
            return str(exc)

    # The models are measured MEASURE_THREADS at a time: torch's kernels release the GIL, so a
    # worker alone on its machine (one student checking a notebook) uses a second core. Each model
    # runs the same operations whatever runs beside it, so the figures do not depend on it.
    with ThreadPoolExecutor(MEASURE_THREADS, thread_name_prefix="measure") as pool:
        outcomes = dict(zip(roles, pool.map(measured, roles)))
    for role in config.model_names():   # in the config's order, as the report lists them
        outcome = probe.errors[role] if role in probe.errors else outcomes[role]
        if isinstance(outcome, str):
            missing[role] = outcome
            continue
        figures[role] = outcome.figures
        if captions is not None:
            captions[role] = outcome.captions
    return figures, missing


def kl_unit(probe: ProbeData, inputs: UnitInputs) -> KLUnitFigures:
    values = probe.get("kl_unit")
    if values is None:
        raise ShapeError("kl_divergence returned nothing")
    error = metrics.kl_relative_error(values, inputs.kl_mu, inputs.kl_log_sigma)
    return KLUnitFigures(
        rows=len(inputs.kl_mu),
        max_rel_error=error,
        student_mean=float(np.mean(values)),
        analytic_mean=float(metrics.kl_to_standard_normal(inputs.kl_mu, inputs.kl_log_sigma).mean()),
    )


def reparam_unit(probe: ProbeData, inputs: UnitInputs) -> ReparamUnitFigures:
    draws = probe.get("reparam_unit")
    if draws is None or draws.shape != inputs.reparam_mu.shape:
        shape = None if draws is None else list(draws.shape)
        raise ShapeError(f"reparameterize returned shape {shape}, expected {list(inputs.reparam_mu.shape)}")
    stats = metrics.reparam_stats(draws, inputs.reparam_mu, inputs.reparam_log_sigma)
    return ReparamUnitFigures(
        mean_error=stats.mean_z_error,
        std_error=stats.std_ratio_error,
        no_noise=bool(stats.identical_to_mu),
        draws=int(stats.draws),
    )


def _unit(name: str, fn, probe: ProbeData, inputs: UnitInputs, missing: dict):
    if name in probe.errors:
        missing[name] = probe.errors[name]
        return None
    try:
        return fn(probe, inputs)
    except (ShapeError, ValueError) as exc:
        missing[name] = str(exc)
        return None


@dataclass
class ReferenceMeasurement:
    """The reference's figures (the tuned model at one β, and the best-β anchor) and its samples'
    captions: the same for every student who chose that β, so computed once per β and run."""

    figures: dict[str, ModelFigures]
    captions: dict[str, SampleCaptions] = field(default_factory=dict)
    best: ModelFigures | None = None   # the tuned model's reference at the set's own best β


def measure_reference(reference: ProbeData, reference_best: ProbeData, inputs: ProbeInputs, judge: Judge,
                      config: AssignmentConfig) -> ReferenceMeasurement:
    captions: dict[str, SampleCaptions] = {}
    figures, missing = all_model_figures(reference, inputs, judge, config, check_memorisation=False,
                                         captions=captions)
    if missing:  # the grader's own models: a failure here is a bug, not the student's
        raise RuntimeError(f"reference models could not be measured: {missing}")
    tuned = config.tuned_model
    best = model_figures(reference_best, tuned.role, inputs, judge) if tuned is not None else None
    return ReferenceMeasurement(figures, captions, best)


def measure(
    student: ProbeData,
    reference: ReferenceMeasurement,
    inputs: ProbeInputs,
    unit_inputs: UnitInputs,
    judge: Judge,
    *,
    mean_image_mse: float,
    good_betas: list[float],
    reference_best_beta: float | None,
    best_beta: float | None,
    config: AssignmentConfig,
) -> StudentMeasurement:
    captions: dict[str, SampleCaptions] = {}
    student_figures, missing = all_model_figures(student, inputs, judge, config, captions=captions)
    if "probe" in student.errors:
        missing.update({role: student.errors["probe"] for role in config.model_names() if role not in missing})
    result = Metrics(
        student=student_figures,
        reference=reference.figures,
        reference_best=reference.best,
        mean_image_mse=mean_image_mse,
        kl_unit=_unit("kl_divergence", kl_unit, student, unit_inputs, missing),
        reparam_unit=_unit("reparameterize", reparam_unit, student, unit_inputs, missing),
        reference_good_betas=sorted(good_betas),
        reference_best_beta=reference_best_beta,
    )
    anchor = config.model(config.assessable.model)
    anchor_mse = reference.figures[anchor.role].mse
    ratio = config.assessable.max_reference_mse_ratio
    if anchor_mse is None:   # a reference that diverged: its NaN figures are kept as None
        assessable, shown = False, "no finite MSE"
    else:
        assessable, shown = anchor_mse < ratio * mean_image_mse, f"MSE {anchor_mse:.4f}"
    reason = (
        f"the reference model ({anchor.label}) reconstructs at {shown}, not below {ratio:g} x the "
        f"mean image's {mean_image_mse:.4f}, so good and broken models cannot be told apart"
    )
    return StudentMeasurement(
        metrics=result, missing=missing, best_beta=best_beta,
        assessable=assessable, assessable_reason="" if assessable else reason, captions=captions,
    )
