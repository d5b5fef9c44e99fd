"""Memorisation: how many generated images are (near-)copies of real ones.

A generator that hands back stored MNIST digits would score a near-perfect Fréchet distance
(Kaggle's image-generation competition added a memorisation-penalised FID for that reason). Here
every sample's nearest real image is found at 14x14 resolution (2x2 average pooling keeps shapes
and makes the search four times cheaper); its distance is the RMS pixel difference. A sample
closer than a threshold to some real image counts as a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import as_float_tensor

CHUNK = 8192


def pooled(images) -> torch.Tensor:
    """[N, 196] float32: images [N, 1, 28, 28] / [N, 784] averaged over 2x2 blocks."""
    x = as_float_tensor(images, "images").to(torch.float32).reshape(-1, 1, 28, 28)
    return F.avg_pool2d(x, 2).reshape(len(x), -1)


@dataclass
class ImageBank:
    """Real images to compare samples with, pooled, with their squared norms."""

    pooled: torch.Tensor      # [M, 196]
    norms: torch.Tensor       # [M]

    @classmethod
    def of(cls, images) -> "ImageBank":
        p = pooled(images)
        return cls(p, (p * p).sum(dim=1))

    def nearest_distance(self, samples) -> torch.Tensor:
        """[N]: each sample's RMS distance (per pooled pixel) to its nearest image in the bank."""
        s = pooled(samples)
        s_norms = (s * s).sum(dim=1, keepdim=True)
        best = torch.full((len(s),), float("inf"))
        for start in range(0, len(self.pooled), CHUNK):
            bank, norms = self.pooled[start : start + CHUNK], self.norms[start : start + CHUNK]
            squared = (s_norms + norms[None, :] - 2.0 * s @ bank.T).clamp_min(0.0)
            best = torch.minimum(best, squared.min(dim=1).values)
        return (best / s.shape[1]).sqrt()


def memorised_share(samples, bank: ImageBank, threshold: float) -> float:
    """Share of samples closer than `threshold` (RMS per pooled pixel) to some real image."""
    return (bank.nearest_distance(samples) < threshold).double().mean().item()
