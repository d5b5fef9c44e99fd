"""Shape checks shared by the metrics: a clear ValueError instead of a broadcasting surprise."""

from __future__ import annotations

import torch


def as_float_tensor(value, name: str) -> torch.Tensor:
    """`value` (tensor or array-like) as a float64 CPU tensor; metrics are summaries, not hot loops."""
    tensor = torch.as_tensor(value)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: expected numbers, got dtype {tensor.dtype}")
    return tensor.detach().to("cpu", torch.float64)


def flat_images(value, name: str) -> torch.Tensor:
    """[B, 1, 28, 28], [B, 28, 28] or [B, 784] (any image size) -> [B, pixels]."""
    tensor = as_float_tensor(value, name)
    if tensor.dim() < 2:
        raise ValueError(f"{name}: expected a batch of images [B, ...], got shape {tuple(tensor.shape)}")
    return tensor.reshape(tensor.shape[0], -1)


def same_rows(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")
