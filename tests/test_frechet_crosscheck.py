"""The Fréchet distance cross-checked against an independent formula: pytorch-fid's

    d^2 = |m1 - m2|^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2)

with scipy.linalg.sqrtm on the (non-symmetric) product, where grader/metrics/frechet.py takes the
eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2). On well-conditioned covariances the two routes
must agree to round-off; the tolerance is checked to reject a plausible wrong trace term.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from grader.metrics import FeatureStats, frechet_distance, frechet_distance_from_stats

REL_TOL = 1e-8


def _sqrtm_frechet(mean_a, cov_a, mean_b, cov_b) -> float:
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = np.real_if_close(root, tol=1000)   # sqrtm may return a complex array with ~0 imaginary parts
    assert np.isrealobj(root), "sqrtm of a product of SPD matrices should be real"
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def _random_spd(rng: np.random.Generator, dim: int, low: float, high: float) -> np.ndarray:
    """Q diag(eigenvalues in [low, high]) Q^T with a random rotation Q: condition number <= high/low."""
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rotation * rng.uniform(low, high, dim)) @ rotation.T


def _random_pair(dim: int, seed: int):
    rng = np.random.default_rng(seed)
    cov_a = _random_spd(rng, dim, 0.5, 3.0)
    cov_b = _random_spd(rng, dim, 0.2, 5.0)          # a different spectrum and eigenbasis
    mean_a, mean_b = rng.standard_normal(dim), rng.standard_normal(dim) * 0.5
    return mean_a, cov_a, mean_b, cov_b


CASES = [(dim, seed) for dim in (1, 2, 5, 16, 64) for seed in (0, 1, 2)]


@pytest.mark.parametrize(("dim", "seed"), CASES)
def test_frechet_matches_scipy_sqrtm_formula(dim, seed):
    mean_a, cov_a, mean_b, cov_b = _random_pair(dim, seed)
    if dim > 1:
        assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)   # the case where the trace term is hard
    expected = _sqrtm_frechet(mean_a, cov_a, mean_b, cov_b)
    got = frechet_distance_from_stats(FeatureStats(mean_a, cov_a, n=1000), FeatureStats(mean_b, cov_b, n=1000))
    assert got == pytest.approx(expected, rel=REL_TOL)
    # symmetric in its arguments, like the formula
    assert frechet_distance_from_stats(FeatureStats(mean_b, cov_b, n=1000), FeatureStats(mean_a, cov_a, n=1000)) \
        == pytest.approx(expected, rel=REL_TOL)


@pytest.mark.parametrize(("dim", "seed"), [(5, 0), (16, 1), (64, 2)])
def test_tolerance_rejects_a_wrong_trace_term(dim, seed):
    # Tr(S1^(1/2) S2^(1/2)) equals Tr (S1 S2)^(1/2) only when S1, S2 commute: a natural slip that
    # the tolerance above must catch, or the cross-check proves nothing.
    mean_a, cov_a, mean_b, cov_b = _random_pair(dim, seed)
    right = _sqrtm_frechet(mean_a, cov_a, mean_b, cov_b)
    diff = mean_a - mean_b
    wrong_trace = np.trace(np.real(scipy.linalg.sqrtm(cov_a)) @ np.real(scipy.linalg.sqrtm(cov_b)))
    wrong = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * wrong_trace)
    assert wrong != pytest.approx(right, rel=REL_TOL)


def test_frechet_from_samples_matches_scipy_on_their_moments():
    # the whole path (features -> unbiased mean/cov -> distance), unequal covariances by construction
    g = torch.Generator().manual_seed(7)
    a = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.4 + torch.eye(8, dtype=torch.float64)
    b = torch.randn(3000, 8, generator=g, dtype=torch.float64) @ mix + 0.3
    an, bn = a.numpy(), b.numpy()
    expected = _sqrtm_frechet(an.mean(0), np.cov(an, rowvar=False), bn.mean(0), np.cov(bn, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=REL_TOL)
