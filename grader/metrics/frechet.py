"""Fréchet distance between two sets of feature vectors, each summarized as a Gaussian.

    d^2 = |m1 - m2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

the FID formula, here on the grader's classifier features instead of Inception's, in float64.

Tr (S1 S2)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
matrix S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), with scipy.linalg.eigh. pytorch-fid
calls scipy.linalg.sqrtm on S1 S2 instead; that product is not symmetric and, with the dead
ReLU features a small classifier has, singular, where sqrtm warns, loses accuracy and needs an
eps fudge. The symmetric form stays exact. torchmetrics' FrechetInceptionDistance was not used:
its public class is built around an image feature network, and its matrix routine is private.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._checks import as_float_tensor


@dataclass
class FeatureStats:
    mean: np.ndarray   # [F]
    cov: np.ndarray    # [F, F], unbiased (divides by n - 1)
    n: int


def feature_stats(features) -> FeatureStats:
    """Mean and covariance of `features` [N, F] (N >= 2), in float64."""
    x = as_float_tensor(features, "features").numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features: expected [N >= 2, F], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features: contain NaN or infinite values")
    return FeatureStats(mean=x.mean(axis=0), cov=np.atleast_2d(np.cov(x, rowvar=False)), n=x.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr (A B)^(1/2) for symmetric positive semi-definite A, B."""
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = scipy.linalg.eigh((middle + middle.T) / 2, eigvals_only=True)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())   # negatives are round-off


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance (squared, as FID reports it) between two Gaussians."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    diff = a.mean - b.mean
    distance = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt_product(a.cov, b.cov)
    return float(max(distance, 0.0))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between feature sets [N, F] and [M, F] (or their FeatureStats)."""
    a = features_a if isinstance(features_a, FeatureStats) else feature_stats(features_a)
    b = features_b if isinstance(features_b, FeatureStats) else feature_stats(features_b)
    return frechet_distance_from_stats(a, b)
