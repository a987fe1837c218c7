"""Segmentation metrics, shared by training validation, ``evaluate`` and ``compare``.

The headline "Dice" of petseg is the foreground Dice per image, 2|P∩G| / (|P| + |G|), taken as 1.0
when both prediction and ground truth are empty, averaged over images.
"""

from __future__ import annotations

import torch


def _flat(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) class maps -> (N, H*W) boolean foreground maps."""
    return (pred != 0).flatten(1), (target != 0).flatten(1)


def intersection_and_sizes(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image: |P∩G|, |P|, |G| (as float64)."""
    p, g = _flat(pred, target)
    return (p & g).sum(1).double(), p.sum(1).double(), g.sum(1).double()


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, p, g = intersection_and_sizes(pred, target)
    denominator = p + g
    return torch.where(denominator > 0, 2 * inter / denominator.clamp(min=1), torch.ones_like(inter))


def iou_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, p, g = intersection_and_sizes(pred, target)
    union = p + g - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
