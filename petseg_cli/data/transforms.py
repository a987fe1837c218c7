"""Augmentation (albumentations, on uint8 arrays) and normalisation (torch, on whole batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from ..base.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..config.settings import AugmentSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Input normalisations by name: (mean, std) of [0, 1] pixel values. config.toml records the name.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # what ImageNet-pretrained encoders expect
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels scaled to [0, 1] only
}
DEFAULT_NORMALIZATION = "imagenet"


def check_normalization(name: str, option: str = "data.normalization") -> None:
    if name not in NORMALIZATIONS:
        raise UsageError(f"{option} must be one of {', '.join(NORMALIZATIONS)}, got {name!r}")

# Magnitudes of the optional augmentations (their probabilities are settings).
AFFINE = {"scale": (0.85, 1.15), "translate_percent": (-0.1, 0.1), "rotate": (-20, 20)}
CROP_SCALE = (0.5, 1.0)  # area of the random resized crop, as a fraction of the image
COLOR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}


def build_augmentation(settings: "AugmentSettings", image_size: int) -> Any | None:
    """The training augmentation applied to image and mask together, or None when disabled.

    The four original transforms come first and always (the seed recipe's random choices stay the same);
    each optional one is appended only when its probability is above 0, so it draws no random numbers
    when it is off."""
    if not settings.enabled:
        return None
    import albumentations as A

    transforms = [
        A.HorizontalFlip(p=settings.horizontal_flip),
        A.RandomRotate90(p=settings.random_rotate90),
        A.GridDistortion(p=settings.grid_distortion),
        A.RandomBrightnessContrast(p=settings.brightness_contrast),
    ]
    optional = [
        (settings.affine, lambda p: A.Affine(**AFFINE, border_mode=0, fill=0, fill_mask=0, p=p)),
        (settings.random_resized_crop, lambda p: A.RandomResizedCrop(size=(image_size, image_size), scale=CROP_SCALE, p=p)),
        (settings.color_jitter, lambda p: A.ColorJitter(**COLOR_JITTER, p=p)),
    ]
    transforms += [make(p) for p, make in optional if p > 0]
    return A.Compose(transforms)


# Mixing two training photos (their probabilities are settings): CutMix pastes a box of this share of the
# area, of an aspect ratio between these, from another photo (image and mask); copy-paste pastes the other
# photo's pet (its mask's pixels).
CUTMIX_AREA = (0.1, 0.5)
CUTMIX_ASPECT = (0.5, 2.0)
MIXING_STREAM = 0x6D1C  # the mixing's random numbers: a stream of their own, apart from the augmentation's


@dataclass(frozen=True)
class Mixing:
    """CutMix and copy-paste of pets between training photos, applied to image and mask together. An item's
    choices come from its augmentation seed alone (the partner photo too), so they are the same whatever
    the workers and after a resume. ``partner(index, seed)`` is another photo of the split, augmented."""

    cutmix: float
    copy_paste: float

    def __call__(
        self, image: "np.ndarray", mask: "np.ndarray", seed: int, count: int,
        partner: Callable[[int, int], tuple["np.ndarray", "np.ndarray"]],
    ) -> tuple["np.ndarray", "np.ndarray"]:
        import numpy as np

        rng = np.random.default_rng((seed, MIXING_STREAM))
        chance, partners, seeds = rng.random(2), rng.integers(0, count, 2), rng.integers(0, 2**31, 2)
        area, aspect, corner = rng.uniform(*CUTMIX_AREA), np.exp(rng.uniform(*np.log(CUTMIX_ASPECT))), rng.random(2)
        if chance[0] < self.cutmix:
            other_image, other_mask = partner(int(partners[0]), int(seeds[0]))
            height, width = mask.shape
            box_h = min(height, max(1, round(math.sqrt(area * height * width / aspect))))
            box_w = min(width, max(1, round(math.sqrt(area * height * width * aspect))))
            y, x = int(corner[0] * (height - box_h + 1)), int(corner[1] * (width - box_w + 1))
            image, mask = np.array(image), np.array(mask)
            image[y : y + box_h, x : x + box_w] = other_image[y : y + box_h, x : x + box_w]
            mask[y : y + box_h, x : x + box_w] = other_mask[y : y + box_h, x : x + box_w]
        if chance[1] < self.copy_paste:
            other_image, other_mask = partner(int(partners[1]), int(seeds[1]))
            pet = np.asarray(other_mask) == 1
            image, mask = np.array(image), np.array(mask)
            image[pet], mask[pet] = other_image[pet], 1
        return image, mask


def build_mixing(settings: "AugmentSettings") -> Mixing | None:
    """CutMix and copy-paste between training photos, or None when both are off (or augmentation is): then
    nothing draws a random number, and training is what it was without them."""
    if not settings.enabled or not (settings.cutmix or settings.copy_paste):
        return None
    return Mixing(settings.cutmix, settings.copy_paste)


def normalize(images: "torch.Tensor", normalization: str = DEFAULT_NORMALIZATION) -> "torch.Tensor":
    """(N, 3, H, W) uint8 in [0, 255] -> float32 scaled to [0, 1] and normalised with the named statistics
    (in the memory format it came in)."""
    mean, std = _statistics(images.device, normalization)
    return (images.float() - mean) / std


@lru_cache(maxsize=None)
def _statistics(device: "torch.device", normalization: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Made once per device: a tensor made from a list every step would be a synchronous copy to a GPU."""
    import torch

    mean, std = NORMALIZATIONS[normalization]
    with torch.inference_mode(False):  # usable in training even when first made during validation
        mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std
