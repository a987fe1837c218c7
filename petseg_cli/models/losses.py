"""Training losses over (N, 2, H, W) logits and (N, H, W) masks of 0 (background) and 1 (pet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from ..base.errors import UsageError

LOSSES = ("ce", "dice", "ce+dice")
SMOOTH = 1.0  # keeps the Dice of an image with no pet (and no predicted pet) defined and near 1


def check_loss(name: str, option: str = "--loss") -> None:
    if name not in LOSSES:
        raise UsageError(f"{option} must be one of {', '.join(LOSSES)}, got {name!r}")


def soft_dice_loss(logits: "torch.Tensor", masks: "torch.Tensor") -> "torch.Tensor":
    """1 - soft Dice of the foreground probability, computed per image and averaged over the batch."""
    p = logits.float().softmax(1)[:, 1]
    target = (masks == 1).float()
    intersection = (p * target).sum(dim=(1, 2))
    total = p.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
    return (1 - (2 * intersection + SMOOTH) / (total + SMOOTH)).mean()


def build_loss(name: str) -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
    """ce (cross-entropy), dice (soft Dice) or ce+dice (their sum)."""
    from torch import nn

    ce = nn.CrossEntropyLoss()
    losses = {
        "ce": ce,
        "dice": soft_dice_loss,
        "ce+dice": lambda logits, masks: ce(logits, masks) + soft_dice_loss(logits, masks),
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return losses[name]
