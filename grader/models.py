"""The loop the grader trains its reference models with, and the losses it trains them on.

The models are the config's architecture (the solution notebook's own classes, taken out of it
by grader.config); the solution trains them with the same loop and losses (a test runs it and
compares). Data stays in memory as tensors and batches are drawn by index, not by a per-image
DataLoader, which is what makes reference training fast on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors per image, [B]."""
    return ((x_hat.reshape(x.shape[0], -1) - x.reshape(x.shape[0], -1)) ** 2).sum(dim=1)


def kl_divergence(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, [B]."""
    return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(dim=1)


def reparameterize(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    return mu + torch.exp(log_sigma) * torch.randn_like(mu)


@dataclass
class TrainSettings:
    nz: int
    epochs: int
    batch_size: int
    lr: float
    seed: int


@dataclass
class TrainedModel:
    model: nn.Module
    beta: float | None          # None for the plain autoencoder
    history: list[dict] = field(default_factory=list)   # [{"epoch", "rec", "kl"}]


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator,
                     min_size: int = 1) -> Iterator[torch.Tensor]:
    """Indices 0..n-1 in one random order drawn from `generator`, batch_size at a time; a last
    batch of fewer than min_size is left out (batch norm cannot train on a lone image)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) >= min_size:
            yield batch


def train_model(
    images: torch.Tensor,
    settings: TrainSettings,
    beta: float | None,
    device: torch.device | str,
    build: Callable[[int], nn.Module],
) -> TrainedModel:
    """Train an autoencoder (beta=None) or a VAE with loss mean(rec + beta * KL), seeded by
    settings.seed. build: the architecture's class (the config's, for the model's kind), built as
    build(latent size); only its encode and decode are called, as the probe calls them: an
    autoencoder's encode returns the code, a VAE's (mu, log_sigma)."""
    torch.manual_seed(settings.seed)
    model = build(settings.nz).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    images = images.to(device)
    history = []
    for epoch in range(settings.epochs):
        model.train()
        rec_sum = kl_sum = 0.0
        for index in shuffled_batches(len(images), settings.batch_size, generator):
            x = images[index.to(images.device)]
            if beta is None:
                rec, kl = reconstruction_loss(model.decode(model.encode(x)), x), torch.zeros(len(x), device=x.device)
                loss = rec.mean()
            else:
                mu, log_sigma = model.encode(x)
                x_hat = model.decode(reparameterize(mu, log_sigma))
                rec, kl = reconstruction_loss(x_hat, x), kl_divergence(mu, log_sigma)
                loss = (rec + beta * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rec_sum += rec.sum().item()
            kl_sum += kl.sum().item()
        n = len(images)
        history.append({"epoch": epoch + 1, "rec": rec_sum / n, "kl": kl_sum / n})
        if not math.isfinite(rec_sum):
            break
    model.eval()
    return TrainedModel(model=model.cpu(), beta=beta, history=history)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when there is a GPU (or when asked), else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
