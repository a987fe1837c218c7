"""Training losses over (N, 2, H, W) logits and (N, H, W) masks of 0 (background) and 1 (pet).

A loss is one term or two joined by "+": ce (cross-entropy, optionally label-smoothed), dice (soft Dice
of the pet probability, per image) and lovasz (the Lovász hinge of the pet logit, per image). Each term
has a weight setting (``WEIGHT_OF``, default 1.0: the sum as it always was)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from ..config.settings import TrainSettings

from ..base.errors import UsageError

LOSSES = ("ce", "dice", "ce+dice", "lovasz", "ce+lovasz")
WEIGHT_OF = {"ce": "ce_weight", "dice": "dice_weight", "lovasz": "lovasz_weight"}  # each term's train setting
SMOOTH = 1.0  # keeps the Dice of an image with no pet (and no predicted pet) defined and near 1

Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def check_loss(name: str, option: str = "--loss") -> None:
    if name not in LOSSES:
        raise UsageError(f"{option} must be one of {', '.join(LOSSES)}, got {name!r}")


def terms_of(name: str) -> tuple[str, ...]:
    return tuple(name.split("+"))


def check_settings(t: "TrainSettings") -> None:
    """The loss's name, its terms' weights (positive; a weight other than 1 only for a term the loss has)
    and the label smoothing of its cross-entropy."""
    check_loss(t.loss)
    terms = terms_of(t.loss)
    for term, key in WEIGHT_OF.items():
        weight = getattr(t, key)
        if weight <= 0:
            raise UsageError(f"train.{key} must be positive, got {weight}")
        if weight != 1.0 and term not in terms:
            raise UsageError(f"train.{key} = {weight} weighs a {term} term, which --loss {t.loss} does not have")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise UsageError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.label_smoothing and "ce" not in terms:
        raise UsageError(f"train.label_smoothing smooths the cross-entropy, which --loss {t.loss} does not have")


def soft_dice_loss(logits: "torch.Tensor", masks: "torch.Tensor") -> "torch.Tensor":
    """1 - soft Dice of the foreground probability, computed per image and averaged over the batch."""
    p = logits.float().softmax(1)[:, 1]
    target = (masks == 1).float()
    intersection = (p * target).sum(dim=(1, 2))
    total = p.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
    return (1 - (2 * intersection + SMOOTH) / (total + SMOOTH)).mean()


def lovasz_gradient(truth_sorted: "torch.Tensor") -> "torch.Tensor":
    """For (N, P) ground truths (1: pet) in the order of decreasing error, the increments of the Jaccard
    loss as each pixel in turn joins the set of mistakes (Berman et al. 2018, Algorithm 1), per image."""
    import torch

    pets = truth_sorted.sum(1, keepdim=True)
    intersection = pets - truth_sorted.cumsum(1)
    union = pets + (1 - truth_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge_loss(logits: "torch.Tensor", masks: "torch.Tensor") -> "torch.Tensor":
    """The Lovász hinge of the pet logit (logit1 - logit0), per image, averaged over the batch: the Lovász
    extension of the Jaccard loss applied to the hinge errors max(0, 1 - logit x sign), sign +1 for pet
    and -1 for background (Berman, Triki, Blaschko 2018, binary case)."""
    import torch

    logits = logits.float()
    pet_logit = (logits[:, 1] - logits[:, 0]).flatten(1)
    truth = (masks == 1).flatten(1).float()
    errors = 1 - pet_logit * (2 * truth - 1)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    gradient = lovasz_gradient(truth.gather(1, order))
    return (torch.relu(errors_sorted) * gradient).sum(1).mean()


def build_loss(t: "TrainSettings") -> Loss:
    """``t.loss``'s terms, each times its weight (a weight of 1 multiplies nothing), summed."""
    from torch import nn

    check_loss(t.loss)
    available: dict[str, Loss] = {
        "ce": nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        "dice": soft_dice_loss,
        "lovasz": lovasz_hinge_loss,
    }
    parts = [(available[term], getattr(t, WEIGHT_OF[term])) for term in terms_of(t.loss)]
    weighted = [fn if weight == 1.0 else _weighted(fn, weight) for fn, weight in parts]
    if len(weighted) == 1:
        return weighted[0]
    first, second = weighted
    return lambda logits, masks: first(logits, masks) + second(logits, masks)


def _weighted(fn: Loss, weight: float) -> Loss:
    return lambda logits, masks: weight * fn(logits, masks)
