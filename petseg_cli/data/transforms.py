"""Augmentation (albumentations, on uint8 arrays) and normalisation (torch, on whole batches)."""

from __future__ import annotations

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
    """(N, 3, H, W) uint8 in [0, 255] -> float32 scaled to [0, 1] and normalised with ImageNet statistics."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean) / std
