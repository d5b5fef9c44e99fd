"""Statistics of reparameterized draws z = mu + sigma * eps against the mu and sigma they came from.

Draws are stacked along dim 0 (K draws of the same mu, log_sigma, as the probe's tiled rows), so
each latent element has K samples. Each draw is standardized, e = (z - mu) / sigma, which is
N(0, 1) for a correct implementation; then per element
    mean z-error = |mean_k e|         (= |mean(z) - mu| / sigma)
    std ratio error = |std_k e - 1|   (= |std(z) / sigma - 1|)
both averaged over the elements. For a correct implementation they shrink like 1/sqrt(K):
about 0.8/sqrt(K) and 0.56/sqrt(K), so K in the thousands keeps them far under a 0.1 tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._checks import as_float_tensor


@dataclass
class ReparamStats:
    mean_z_error: float       # inf when the draws are not finite
    std_ratio_error: float
    identical_to_mu: bool     # every draw equals mu (to 1e-6): no noise was added, e.g. `return mu`
    draws: int                # K

    def as_dict(self) -> dict[str, float | None]:
        return {k: float(v) for k, v in asdict(self).items()}


def reparam_stats(draws, mu, log_sigma) -> ReparamStats:
    """Statistics of `draws` [K, ...] against `mu`, `log_sigma` (each broadcastable to `draws`)."""
    z = as_float_tensor(draws, "draws")
    mu, log_sigma = as_float_tensor(mu, "mu"), as_float_tensor(log_sigma, "log_sigma")
    if z.dim() < 1 or z.shape[0] < 2:
        raise ValueError(f"draws: expected at least 2 draws stacked on dim 0, got shape {tuple(z.shape)}")
    try:
        mu, log_sigma = torch.broadcast_to(mu, z.shape), torch.broadcast_to(log_sigma, z.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"draws of shape {tuple(z.shape)} do not match mu {tuple(mu.shape)} / "
            f"log_sigma {tuple(log_sigma.shape)}"
        ) from exc
    identical = bool(torch.allclose(z, mu, rtol=0.0, atol=1e-6))
    if not torch.isfinite(z).all():
        return ReparamStats(float("inf"), float("inf"), identical, z.shape[0])
    e = (z - mu) / torch.exp(log_sigma)
    return ReparamStats(
        mean_z_error=e.mean(dim=0).abs().mean().item(),
        std_ratio_error=(e.std(dim=0) - 1).abs().mean().item(),
        identical_to_mu=identical,
        draws=z.shape[0],
    )
