"""Augmentation (albumentations, on uint8 arrays) and normalisation (torch, on whole batches)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..settings import AugmentSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_augmentation(settings: "AugmentSettings") -> Any | None:
    """The training augmentation applied to image and mask together, or None when disabled."""
    if not settings.enabled:
        return None
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=settings.horizontal_flip),
            A.RandomRotate90(p=settings.random_rotate90),
            A.GridDistortion(p=settings.grid_distortion),
            A.RandomBrightnessContrast(p=settings.brightness_contrast),
        ]
    )


def normalize(images: "torch.Tensor") -> "torch.Tensor":
    """(N, 3, H, W) uint8 in [0, 255] -> float32 scaled to [0, 1] and normalised with ImageNet statistics
    (in the memory format it came in)."""
    mean, std = _statistics(images.device)
    return (images.float() - mean) / std


@lru_cache(maxsize=None)
def _statistics(device: "torch.device") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Made once per device: a tensor made from a list every step would be a synchronous copy to a GPU."""
    import torch

    with torch.inference_mode(False):  # usable in training even when first made during validation
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std
