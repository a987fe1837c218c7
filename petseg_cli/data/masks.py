"""From images to the model's input size and from its pet probability back to each image's size.

numpy and PIL only: every backend of ``predictor`` goes through these steps, so all give the same masks
for the same probabilities.
"""

from __future__ import annotations

import numpy as np

from .images import resize

DEFAULT_THRESHOLD = 0.5  # pet where p >= 0.5: the 8-bit probability is >= 128 (threshold_level)
MASK_ON = 255


def model_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """(H, W, 3) uint8 images -> one (N, size, size, 3) uint8 batch (bilinear, as in training)."""
    return np.stack([resize(image, (size, size)) for image in images])


def to_8bit(pet: np.ndarray) -> np.ndarray:
    """A pet probability in [0, 1] (any shape) -> uint8 0-255, rounded half to even."""
    return np.round(np.asarray(pet, dtype=np.float32) * 255).astype(np.uint8)


def at_image_sizes(pet_8bit: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """(N, h, w) uint8 probabilities at the model's size -> one (H, W) map per shape (H, W[, C])."""
    return [resize(p, tuple(shape[:2])) for p, shape in zip(pet_8bit, shapes)]


def threshold_level(threshold: float) -> int:
    """The 8-bit probability from which a pixel is pet at ``threshold``: 0.5 -> 128, as p >= 0.5 reads on
    the 0-255 scale (the same level for every threshold that rounds alike)."""
    return int(np.ceil(threshold * 255 - 1e-9))


def pet_mask(probability: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """An 8-bit probability map -> the 0/255 mask ``infer`` writes (pet from ``threshold`` up)."""
    return (probability >= threshold_level(threshold)).astype(np.uint8) * np.uint8(MASK_ON)
