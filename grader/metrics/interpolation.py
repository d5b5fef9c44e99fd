"""Quality of latent interpolations: do the in-between images look like digits, and is the path even?

- accept: the share of *intermediate* images (ends excluded: they are reconstructions) whose most
  probable class has probability >= `threshold` under the grader's classifier;
- smoothness: per path, the largest L2 step between consecutive images divided by the path's
  total length (sum of steps), averaged over paths. An evenly spaced path of S images scores
  1/(S-1), a path that jumps at once scores 1; lower is smoother. A path that never moves (all
  images equal) is no interpolation and scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_float_tensor


@dataclass
class InterpolationQuality:
    accept: float
    smoothness: float
    even_path: float   # 1/(S-1), the best possible smoothness


def _paths(decoded) -> torch.Tensor:
    """[P, S, 1, 28, 28], [P, S, 28, 28] or [P, S, 784] -> [P, S, pixels]."""
    x = as_float_tensor(decoded, "paths")
    if x.dim() < 3 or x.shape[1] < 3:
        raise ValueError(f"paths: expected [P, S >= 3, ...image], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], -1)


def path_smoothness(decoded) -> float:
    x = _paths(decoded)
    steps = (x[:, 1:] - x[:, :-1]).norm(dim=2)            # [P, S-1]
    length = steps.sum(dim=1)
    ratio = torch.where(length > 0, steps.max(dim=1).values / length.clamp_min(1e-300), 1.0)
    return ratio.mean().item()


def interpolation_accept(probs, steps: int, threshold: float = 0.5) -> float:
    """Share of intermediate images accepted; `probs` is [P, S, C] or [P*S, C] in path order."""
    p = as_float_tensor(probs, "probs")
    if p.dim() == 2:
        if p.shape[0] % steps:
            raise ValueError(f"probs: {p.shape[0]} rows is not a whole number of {steps}-step paths")
        p = p.reshape(-1, steps, p.shape[1])
    if p.dim() != 3 or p.shape[1] != steps:
        raise ValueError(f"probs: expected [P, {steps}, classes], got shape {tuple(p.shape)}")
    inner = p[:, 1:-1].max(dim=2).values
    return (inner >= threshold).double().mean().item()


def interpolation_quality(decoded, probs, threshold: float = 0.5) -> InterpolationQuality:
    """Accept rate and smoothness of decoded paths [P, S, ...] and their classifier probs."""
    x = _paths(decoded)
    steps = x.shape[1]
    p = as_float_tensor(probs, "probs")
    if p.reshape(-1, p.shape[-1]).shape[0] != x.shape[0] * steps:
        raise ValueError(f"probs: {tuple(p.shape)} does not match {x.shape[0]} paths of {steps} images")
    return InterpolationQuality(
        accept=interpolation_accept(p, steps, threshold),
        smoothness=path_smoothness(x),
        even_path=1.0 / (steps - 1),
    )
