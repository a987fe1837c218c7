"""Drawing masks on photos with PIL alone: the predicted pet tinted and outlined, the truth outlined.

Used by ``infer --overlay`` and by the ``evaluate --visualize`` tiles, so both show masks alike.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

PREDICTION_RGB = (230, 30, 30)  # red
TRUTH_RGB = (30, 210, 30)  # green
TINT_ALPHA = 0.4
OUTLINE_FRACTION = 1 / 300  # outline half-width, as a fraction of the shorter side


def _mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) array, non-zero = pet -> an "L" image of 0/255."""
    return Image.fromarray(np.where(mask != 0, np.uint8(255), np.uint8(0)))  # uint8: no int64 temporary


def outline(mask: Image.Image) -> Image.Image:
    """The band of pixels near the mask's edge, as an "L" image of 0/255 (a box blur is neither 0 nor 255 there)."""
    radius = max(1, round(min(mask.size) * OUTLINE_FRACTION))
    return mask.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if 0 < v < 255 else 0)


def draw(image: Image.Image, mask: np.ndarray, rgb: tuple[int, int, int], tint: bool) -> Image.Image:
    """``image`` with ``mask`` outlined in ``rgb``, and tinted with it when ``tint``."""
    region = _mask_image(mask)
    colour = Image.new("RGB", image.size, rgb)
    if tint:
        image = Image.composite(Image.blend(image, colour, TINT_ALPHA), image, region)
    return Image.composite(colour, image, outline(region))


def prediction_overlay(image: np.ndarray, prediction: np.ndarray) -> Image.Image:
    """The photo with the predicted pet region tinted and outlined."""
    return draw(Image.fromarray(image), prediction, PREDICTION_RGB, tint=True)


def comparison_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> Image.Image:
    """The photo with the prediction tinted and outlined, and the ground truth outlined on top."""
    return draw(prediction_overlay(image, prediction), truth, TRUTH_RGB, tint=False)
