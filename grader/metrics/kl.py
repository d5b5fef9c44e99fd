"""KL divergence of a diagonal Gaussian to the standard normal, and the check of a student's version."""

from __future__ import annotations

import torch

from ..models import kl_divergence
from ._checks import as_float_tensor, same_rows


def kl_to_standard_normal(mu, log_sigma) -> torch.Tensor:
    """[B]: KL(N(mu, sigma^2) || N(0, I)) in nats, summed over the latent dimensions (float64).

    Closed form per dimension: (mu^2 + sigma^2 - 1 - 2 log sigma) / 2, the training loss's own
    (grader.models.kl_divergence), here on checked float64 CPU copies of the inputs.
    """
    mu, log_sigma = as_float_tensor(mu, "mu"), as_float_tensor(log_sigma, "log_sigma")
    same_rows(mu, log_sigma, "mu", "log_sigma")
    if mu.dim() != 2:
        raise ValueError(f"mu: expected [B, latent size], got shape {tuple(mu.shape)}")
    return kl_divergence(mu, log_sigma)


def kl_relative_error(values, mu, log_sigma, tiny: float = 1e-12) -> float:
    """Largest relative error of `values` (a student's KL per row) against the closed form.

    `values` must hold one number per row: [B] or [B, 1]. NaN or infinite values give inf, so a
    broken implementation never passes a tolerance.
    """
    expected = kl_to_standard_normal(mu, log_sigma)
    got = as_float_tensor(values, "values")
    if got.dim() == 2 and got.shape[1] == 1:
        got = got[:, 0]
    if got.shape != expected.shape:
        raise ValueError(
            f"values: expected one KL per row, shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        )
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - expected).abs() / expected.abs().clamp_min(tiny)).max().item()
