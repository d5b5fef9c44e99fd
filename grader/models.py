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


# The architecture's classes are nn.Modules with encode and decode methods (the config names
# them); these calls check what each returns, so that the rest is typed and a wrong class fails
# with its name rather than deep in a loss.


def _call(model: nn.Module, method: str, value: torch.Tensor) -> object:
    function = getattr(model, method, None)
    if not callable(function):
        raise TypeError(f"{type(model).__name__} has no {method} method")
    return function(value)


def encode_ae(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An autoencoder's code of `x`: its encode returns one tensor."""
    code = _call(model, "encode", x)
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"{type(model).__name__}.encode returned {type(code).__name__}, not a tensor")
    return code


def encode_vae(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A VAE's (mu, log_sigma) of `x`: its encode returns the two tensors first."""
    encoded = _call(model, "encode", x)
    if not isinstance(encoded, (tuple, list)) or len(encoded) < 2:
        raise TypeError(f"{type(model).__name__}.encode returned {type(encoded).__name__}, not (mu, log_sigma)")
    mu, log_sigma = encoded[0], encoded[1]
    if not isinstance(mu, torch.Tensor) or not isinstance(log_sigma, torch.Tensor):
        raise TypeError(f"{type(model).__name__}.encode returned ({type(mu).__name__}, {type(log_sigma).__name__}), "
                        "not two tensors")
    return mu, log_sigma


def decode(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The model's decoding of codes `z`."""
    decoded = _call(model, "decode", z)
    if not isinstance(decoded, torch.Tensor):
        raise TypeError(f"{type(model).__name__}.decode returned {type(decoded).__name__}, not a tensor")
    return decoded


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
                rec, kl = reconstruction_loss(decode(model, encode_ae(model, x)), x), torch.zeros(len(x), device=x.device)
                loss = rec.mean()
            else:
                mu, log_sigma = encode_vae(model, x)
                x_hat = decode(model, reparameterize(mu, log_sigma))
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
