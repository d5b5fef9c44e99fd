"""Metrics against values worked out by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grader import models
from grader.metrics import (
    FeatureStats,
    elbo_per_image,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    interpolation_accept,
    interpolation_quality,
    kl_relative_error,
    kl_to_standard_normal,
    mse_per_image,
    mse_per_pixel,
    path_smoothness,
    reparam_stats,
    sample_quality,
)

# --- reconstruction ------------------------------------------------------------------------------


def test_mse_per_pixel_by_hand_and_shapes_mix():
    x = torch.zeros(2, 1, 28, 28)
    x_hat = torch.zeros(2, 784)
    x_hat[0, :4] = 0.5            # image 0: 4 pixels off by 0.5 -> 4 * 0.25 / 784
    x_hat[1, :] = 1.0             # image 1: every pixel off by 1 -> 1
    per_image = mse_per_image(x_hat, x)
    assert per_image.tolist() == pytest.approx([1.0 / 784, 1.0])
    assert mse_per_pixel(x_hat, x) == pytest.approx((1.0 / 784 + 1.0) / 2)


def test_mse_of_batches_weighted_by_size_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(10, 784, generator=g), torch.rand(10, 1, 28, 28, generator=g)
    in_batches = (3 * mse_per_pixel(x_hat[:3], x[:3]) + 7 * mse_per_pixel(x_hat[3:], x[3:])) / 10
    assert in_batches == pytest.approx(mse_per_pixel(x_hat, x))


def test_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="x_hat"):
        mse_per_image(torch.zeros(2, 783), torch.zeros(2, 784))


# --- KL -----------------------------------------------------------------------------------------


def test_kl_closed_form_by_hand():
    mu = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    log_sigma = torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(2.0), 0.0]])
    # row 0: 0; row 1: (1 + 4) / 2; row 2: (4 - 1 - 2 ln 2) / 2
    expected = [0.0, 2.5, (3 - 2 * math.log(2.0)) / 2]
    assert kl_to_standard_normal(mu, log_sigma).tolist() == pytest.approx(expected)
    # the mean per image, as the grader reports it
    assert kl_to_standard_normal(mu, log_sigma).mean().item() == pytest.approx(sum(expected) / 3)


def test_training_loss_and_metric_share_the_closed_form():
    """The loss keeps the model's dtype and gradient; the metric is the same numbers in float64."""
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
    log_sigma = torch.tensor([[0.1, -0.3], [0.0, 1.0]], requires_grad=True)
    loss = models.kl_divergence(mu, log_sigma)
    assert loss.dtype == torch.float32 and loss.requires_grad
    loss.sum().backward()
    assert torch.allclose(mu.grad, mu.detach())   # d KL / d mu = mu
    metric = kl_to_standard_normal(mu, log_sigma)
    assert metric.dtype == torch.float64 and not metric.requires_grad
    assert metric.tolist() == pytest.approx(loss.tolist(), rel=1e-6)


def test_kl_relative_error():
    mu = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    log_sigma = torch.zeros(2, 2)
    exact = torch.tensor([2.5, 4.5])
    assert kl_relative_error(exact, mu, log_sigma) == pytest.approx(0.0, abs=1e-12)
    assert kl_relative_error(exact.view(2, 1), mu, log_sigma) == pytest.approx(0.0, abs=1e-12)
    # a student forgetting the 1/2: every value doubled -> relative error 1
    assert kl_relative_error(2 * exact, mu, log_sigma) == pytest.approx(1.0)
    # off by 0.09 on 4.5 only -> 0.02
    assert kl_relative_error(torch.tensor([2.5, 4.59], dtype=torch.float64), mu, log_sigma) == pytest.approx(0.02)
    assert kl_relative_error(torch.tensor([2.5, float("nan")]), mu, log_sigma) == math.inf
    with pytest.raises(ValueError, match="one KL per row"):
        kl_relative_error(torch.zeros(2, 2), mu, log_sigma)  # not summed over dims


def test_elbo_by_hand():
    x = torch.zeros(1, 784)
    x_hat = torch.zeros(1, 784)
    x_hat[0, :3] = 1.0                                    # squared error 3
    mu, log_sigma = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)   # KL 2.5
    assert elbo_per_image(x_hat, x, mu, log_sigma).tolist() == pytest.approx([-5.5])


# --- reparameterization -------------------------------------------------------------------------


def test_reparam_stats_by_hand():
    mu = torch.tensor([1.0, -1.0])
    log_sigma = torch.log(torch.tensor([2.0, 0.5]))
    # standardized draws e = [[1, 1], [-1, -3]] -> mean e = [0, -1], std e (unbiased) = [sqrt2, sqrt8]
    draws = mu + torch.exp(log_sigma) * torch.tensor([[1.0, 1.0], [-1.0, -3.0]])
    stats = reparam_stats(draws, mu, log_sigma)
    assert stats.mean_z_error == pytest.approx((0 + 1) / 2)
    assert stats.std_ratio_error == pytest.approx((math.sqrt(2) - 1 + math.sqrt(8) - 1) / 2)
    assert not stats.identical_to_mu and stats.draws == 2


def test_reparam_stats_correct_and_broken_implementations():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, generator=g).repeat(4096, 1)            # the probe's tiled rows
    log_sigma = (torch.rand(6, generator=g) * 2 - 1.5).repeat(4096, 1)
    eps = torch.randn(mu.shape, generator=g)
    good = reparam_stats(mu + torch.exp(log_sigma) * eps, mu, log_sigma)
    assert good.mean_z_error < 0.05 and good.std_ratio_error < 0.05 and not good.identical_to_mu
    var_not_std = reparam_stats(mu + torch.exp(2 * log_sigma) * eps, mu, log_sigma)
    assert var_not_std.std_ratio_error > 0.2
    no_noise = reparam_stats(mu.clone(), mu, log_sigma)
    assert no_noise.identical_to_mu and no_noise.std_ratio_error == pytest.approx(1.0)
    assert set(good.as_dict()) == {"mean_z_error", "std_ratio_error", "identical_to_mu", "draws"}


def test_reparam_stats_rejects_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        reparam_stats(torch.zeros(10, 3), torch.zeros(4), torch.zeros(4))


# --- Fréchet distance --------------------------------------------------------------------------


def test_feature_stats_by_hand():
    stats = feature_stats(torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]]))
    assert stats.mean.tolist() == pytest.approx([1.0, 1.0])
    # deviations x: -1, 1, 0; y: -1, -1, 2 -> var x = 2/2 = 1, var y = 6/2 = 3, cov = (1 - 1 + 0)/2 = 0
    assert stats.cov.tolist() == [pytest.approx([1.0, 0.0]), pytest.approx([0.0, 3.0])]
    assert stats.n == 3


def test_frechet_identical_sets_is_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def _gaussian(mean, cov) -> FeatureStats:
    return FeatureStats(np.asarray(mean, float), np.asarray(cov, float), n=10**6)


def test_frechet_closed_form_commuting_covariances():
    # diagonal covariances: d = |m1 - m2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    a = _gaussian([0.0, 0.0, 1.0], np.diag([1.0, 4.0, 9.0]))
    b = _gaussian([3.0, 4.0, 1.0], np.diag([4.0, 4.0, 1.0]))
    assert frechet_distance_from_stats(a, b) == pytest.approx(25 + 1 + 0 + 4)


def test_frechet_closed_form_non_commuting_2x2():
    # For 2x2 M with positive eigenvalues, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    expected = 1.0**2 + 2.0**2 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    got = frechet_distance_from_stats(_gaussian([1.0, 2.0], s1), _gaussian([0.0, 0.0], s2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_from_samples_approaches_closed_form_and_from_stats():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 2, generator=g)                       # N(0, I)
    b = torch.randn(20000, 2, generator=g) * 2 + torch.tensor([1.0, 0.0])   # N((1,0), 4I)
    # closed form: 1 + 2 * (1 - 2)^2 = 3
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.1)
    # as the grader scores samples: their statistics against the test set's, kept as FeatureStats
    assert frechet_distance_from_stats(feature_stats(b), feature_stats(a)) == pytest.approx(
        frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(b, feature_stats(a)) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_frechet_rejects_bad_features():
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.tensor([[0.0], [float("nan")]]), torch.randn(5, 1))


# --- sample quality -----------------------------------------------------------------------------


def test_sample_quality_by_hand():
    probs = torch.full((200, 10), 0.0)
    probs[:100, 3] = 0.9          # 100 confident 3s
    probs[:100, 4] = 0.1
    probs[100:198, 7] = 0.4       # 98 unconfident 7s
    probs[100:198, 1] = 0.3
    probs[100:198, 2] = 0.3
    probs[198:, 5] = 0.6          # 2 confident 5s: exactly 1% of 200 -> counts
    probs[198:, 6] = 0.4
    q = sample_quality(probs)
    assert q.mean_confidence == pytest.approx((100 * 0.9 + 98 * 0.4 + 2 * 0.6) / 200)
    assert q.coverage == pytest.approx(2 / 10)          # classes 3 and 5
    assert q.confident_share == pytest.approx(102 / 200)
    expected_hist = [0.0] * 10
    expected_hist[3], expected_hist[7], expected_hist[5] = 0.5, 0.49, 0.01
    assert q.histogram == pytest.approx(expected_hist)
    # 1 confident 5 out of 200 is under 1%: not covered
    probs[199, 5], probs[199, 0] = 0.0, 1.0
    assert sample_quality(probs, min_share=0.01).coverage == pytest.approx(1 / 10)


# --- interpolation ------------------------------------------------------------------------------


def test_path_smoothness_even_and_jumping_paths():
    a, b = torch.zeros(784), torch.ones(784)
    alphas = torch.linspace(0, 1, 5).view(5, 1)
    even = (a * (1 - alphas) + b * alphas).view(1, 5, 1, 28, 28)
    jump = torch.stack([a, a, a, b, b]).view(1, 5, 784)
    assert path_smoothness(even) == pytest.approx(1 / 4)
    assert path_smoothness(jump) == pytest.approx(1.0)
    assert path_smoothness(torch.cat([even.view(1, 5, 784), jump])) == pytest.approx((0.25 + 1) / 2)
    still = torch.zeros(1, 5, 784)
    assert path_smoothness(still) == pytest.approx(1.0)


def test_interpolation_accept_counts_intermediates_only():
    probs = torch.full((2, 4, 10), 0.1)          # 2 paths of 4: intermediates are steps 1, 2
    probs[0, 1, 0] = 0.9
    probs[1, 2, 0] = 0.5                          # exactly the threshold: accepted
    probs[1, 0, 0] = 0.99                         # an end point: ignored
    assert interpolation_accept(probs, steps=4) == pytest.approx(2 / 4)
    assert interpolation_accept(probs.view(8, 10), steps=4, threshold=0.6) == pytest.approx(1 / 4)
    paths = torch.linspace(0, 1, 4).view(1, 4, 1).expand(2, 4, 784)
    q = interpolation_quality(paths, probs.view(8, 10))
    assert (q.accept, q.smoothness, q.even_path) == (pytest.approx(0.5), pytest.approx(1 / 3), pytest.approx(1 / 3))
    with pytest.raises(ValueError, match="does not match"):
        interpolation_quality(paths, probs.view(8, 10)[:6])


def test_image_bank_nearest_distance_matches_a_brute_force_search():
    from grader.metrics.memorisation import ImageBank, memorised_share

    generator = torch.Generator().manual_seed(3)
    real = torch.rand(300, 1, 28, 28, generator=generator)
    samples = torch.rand(40, 1, 28, 28, generator=generator)
    samples[:10] = real[100:110] + 0.001          # ten near-copies
    bank = ImageBank.of(real)
    pooled_real = real.reshape(300, 14, 2, 14, 2).mean(dim=(2, 4)).reshape(300, -1).double()
    pooled_samples = samples.reshape(40, 14, 2, 14, 2).mean(dim=(2, 4)).reshape(40, -1).double()
    brute = torch.cdist(pooled_samples, pooled_real).min(dim=1).values / 14.0   # RMS over 196 pixels
    torch.testing.assert_close(bank.nearest_distance(samples).double(), brute, atol=1e-4, rtol=1e-4)
    assert memorised_share(samples, bank, threshold=0.025) == pytest.approx(10 / 40)


def test_memorised_share_pruned_by_the_coarse_bound_equals_the_exhaustive_search():
    """Samples near the threshold on both sides: the pruned search (coarse lower bound, exact
    search for the rest) gives the same share as comparing every exact distance."""
    from grader.metrics.memorisation import ImageBank, memorised_share

    generator = torch.Generator().manual_seed(5)
    real = torch.rand(500, 1, 28, 28, generator=generator) ** 3
    samples = torch.rand(60, 1, 28, 28, generator=generator) ** 3
    for i, noise in enumerate(torch.linspace(0.0, 0.06, 40)):   # copies ever farther from real[i]
        samples[i] = real[i] + noise * torch.randn(1, 28, 28, generator=generator)
    bank = ImageBank.of(real)
    exact = bank.nearest_distance(samples)
    for threshold in (0.01, 0.025, 0.04):
        candidates = bank.may_be_within(samples, threshold)
        assert candidates[exact < threshold].all()        # a copy is never pruned away
        assert not candidates[40:].any()                  # unrelated samples are
        assert memorised_share(samples, bank, threshold) == (exact < threshold).double().mean().item()
    assert 0 < (exact < 0.025).sum() < 40                 # the threshold falls inside the noise range
