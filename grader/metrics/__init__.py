"""Functional metrics, one per module (torchmetrics-style functions): the grader computes each
figure on the whole test set at once, so there are no accumulating classes. Inputs are tensors
or arrays; results are Python floats or small dataclasses, computed in float64 on the CPU."""

from .elbo import elbo_per_image
from .frechet import FeatureStats, feature_stats, frechet_distance, frechet_distance_from_stats
from .interpolation import InterpolationQuality, interpolation_accept, interpolation_quality, path_smoothness
from .kl import kl_relative_error, kl_to_standard_normal
from .memorisation import ImageBank, memorised_share
from .reconstruction import mse_per_image, mse_per_pixel
from .reparam import ReparamStats, reparam_stats
from .sample_quality import SampleQuality, sample_quality

__all__ = [
    "FeatureStats",
    "ImageBank",
    "memorised_share",
    "InterpolationQuality",
    "ReparamStats",
    "SampleQuality",
    "elbo_per_image",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "interpolation_accept",
    "interpolation_quality",
    "kl_relative_error",
    "kl_to_standard_normal",
    "mse_per_image",
    "mse_per_pixel",
    "path_smoothness",
    "reparam_stats",
    "sample_quality",
]
