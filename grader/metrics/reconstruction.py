"""Reconstruction error: mean squared error per pixel between reconstructions and inputs."""

from __future__ import annotations

import torch

from ._checks import flat_images, same_rows


def mse_per_image(x_hat, x) -> torch.Tensor:
    """[B]: each image's squared error averaged over its pixels; [B,784] and [B,1,28,28] mix freely."""
    x_hat, x = flat_images(x_hat, "x_hat"), flat_images(x, "x")
    same_rows(x_hat, x, "x_hat (flattened)", "x (flattened)")
    return ((x_hat - x) ** 2).mean(dim=1)


def mse_per_pixel(x_hat, x) -> float:
    """Squared error averaged over every pixel of every image."""
    return mse_per_image(x_hat, x).mean().item()
