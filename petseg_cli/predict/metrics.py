"""Segmentation metrics, shared by training validation, ``evaluate`` and ``compare``.

The headline "Dice" of petseg is the foreground Dice per image, 2|P∩G| / (|P| + |G|), taken as 1.0
when both prediction and ground truth are empty, averaged over images. IoU is |P∩G| / |P∪G|, also
1.0 when both are empty. Masks and predictions are (N, H, W) class maps; any class but 0 is foreground.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) class maps -> (N, H*W) boolean foreground maps."""
    return (pred != 0).flatten(1), (target != 0).flatten(1)


def intersection_and_sizes(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image: |P∩G|, |P|, |G| (as float64)."""
    p, g = _flat(pred, target)
    return (p & g).sum(1).double(), p.sum(1).double(), g.sum(1).double()


def dice_from_counts(inter: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """2|P∩G| / (|P| + |G|) element-wise, 1.0 where both are empty."""
    denominator = p + g
    return torch.where(denominator > 0, 2 * inter / denominator.clamp(min=1), torch.ones_like(inter))


def iou_from_counts(inter: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """|P∩G| / |P∪G| element-wise, 1.0 where both are empty."""
    union = p + g - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return dice_from_counts(*intersection_and_sizes(pred, target))


def iou_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return iou_from_counts(*intersection_and_sizes(pred, target))


class SegmentationScores:
    """Running figures over batches: per-image Dice, IoU and foreground fraction, and the pooled totals.

    ``update`` takes (N, C, H, W) logits or log-probabilities (cross-entropy is the same for both) and
    the (N, H, W) target classes; the prediction is their argmax.
    """

    def __init__(self) -> None:
        self.dice: list[float] = []
        self.iou: list[float] = []
        self.foreground_fraction: list[float] = []  # of the ground truth
        self.cross_entropy: list[float] = []  # mean over each image's pixels
        self.intersections: list[float] = []  # per image: |P∩G|, |P| and |G| (scores by group pool them)
        self.predicted_pixels: list[float] = []
        self.truth_pixels: list[float] = []
        self.intersection = self.predicted = self.truth = 0.0
        self.correct = self.pixels = 0

    def update(self, scores: torch.Tensor, target: torch.Tensor, pred: torch.Tensor | None = None) -> torch.Tensor:
        """Add a batch; returns its predicted class map (``pred`` when given, else the argmax of ``scores``)."""
        pred = scores.argmax(1) if pred is None else pred
        inter, p, g = intersection_and_sizes(pred, target)
        self.dice += dice_from_counts(inter, p, g).tolist()
        self.iou += iou_from_counts(inter, p, g).tolist()
        self.foreground_fraction += (g / target[0].numel()).tolist()
        self.intersections += inter.tolist()
        self.predicted_pixels += p.tolist()
        self.truth_pixels += g.tolist()
        ce = F.cross_entropy(scores.float(), target.long(), reduction="none").flatten(1).mean(1)
        self.cross_entropy += ce.double().tolist()
        self.intersection += inter.sum().item()
        self.predicted += p.sum().item()
        self.truth += g.sum().item()
        self.correct += int(((pred != 0) == (target != 0)).sum().item())
        self.pixels += target.numel()
        return pred

    def __len__(self) -> int:
        return len(self.dice)

    def degenerate(self) -> str | None:
        """``degenerate_warning`` for every pixel seen so far."""
        pixels = max(self.pixels, 1)
        return degenerate_warning(self.predicted / pixels, self.truth / pixels)

    def summary(self) -> dict[str, float]:
        """dice (mean per image: the headline), pooled_dice (over all pixels of all images), iou (mean
        per image), pixel_accuracy (over all pixels), cross_entropy (mean per image)."""
        n = max(len(self), 1)
        totals = torch.tensor([self.intersection, self.predicted, self.truth], dtype=torch.float64)
        return {
            "dice": sum(self.dice) / n,
            "pooled_dice": dice_from_counts(*totals).item(),
            "iou": sum(self.iou) / n,
            "pixel_accuracy": self.correct / max(self.pixels, 1),
            "cross_entropy": sum(self.cross_entropy) / n,
        }


# A model that marks (nearly) no pixel, or (nearly) every pixel, as pet has learnt nothing useful, whatever
# its Dice: below this fraction of pixels it is "all background", above 1 - it "all pet".
DEGENERATE_FRACTION = 0.02


def degenerate_warning(predicted_fraction: float, truth_fraction: float) -> str | None:
    """A sentence when the prediction is degenerate (pet in under 2% or over 98% of the pixels); else None.
    ``predicted_fraction`` and ``truth_fraction``: the share of pixels predicted as pet, and that are pet."""
    if predicted_fraction < DEGENERATE_FRACTION:
        what = "background"
    elif predicted_fraction > 1 - DEGENERATE_FRACTION:
        what = "pet"
    else:
        return None
    return (
        f"the model predicts {what} almost everywhere (pet in {predicted_fraction:.1%} of the pixels, "
        f"{truth_fraction:.1%} in the ground truth): it is degenerate, whatever its Dice"
    )
