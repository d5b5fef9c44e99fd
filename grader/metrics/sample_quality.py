"""How digit-like generated samples look to the grader's classifier.

- mean confidence: the classifier's largest class probability, averaged over the samples;
- class coverage: the share of classes that are *confidently present*: a class counts when at
  least `min_share` of all samples (1% by default) are predicted as it with probability
  >= `confidence` (0.5). A decoder that draws only a few digits, or only smudges, covers little;
- histogram: the share of samples whose most probable class is each class (sums to 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_float_tensor


@dataclass
class SampleQuality:
    mean_confidence: float
    coverage: float              # classes confidently present / number of classes, in [0, 1]
    histogram: list[float]       # per class: share of samples predicted as it
    confident_share: float       # share of samples with max probability >= confidence


def sample_quality(probs, confidence: float = 0.5, min_share: float = 0.01) -> SampleQuality:
    """Summary of classifier probabilities `probs` [N, C] of N generated samples."""
    p = as_float_tensor(probs, "probs")
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"probs: expected [N > 0, classes], got shape {tuple(p.shape)}")
    n, classes = p.shape
    top, predicted = p.max(dim=1)
    counts = torch.bincount(predicted, minlength=classes).double()
    confident_counts = torch.bincount(predicted[top >= confidence], minlength=classes).double()
    covered = (confident_counts >= min_share * n) & (confident_counts > 0)
    return SampleQuality(
        mean_confidence=top.mean().item(),
        coverage=covered.double().mean().item(),
        histogram=(counts / n).tolist(),
        confident_share=(top >= confidence).double().mean().item(),
    )
