"""From images to the model's input size and from its pet probability back to each image's size.

numpy and PIL only: the torch path (``predict``) and the ONNX path (``onnx_model``) share these steps,
so both give the same masks for the same probabilities.
"""

from __future__ import annotations

import numpy as np

from .data.images import resize

PET_THRESHOLD = 128  # pet where the 8-bit probability is >= 128, i.e. p >= 0.5
MASK_ON = 255


def model_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """(H, W, 3) uint8 images -> one (N, size, size, 3) uint8 batch (bilinear, as in training)."""
    return np.stack([resize(image, (size, size)) for image in images])


def to_8bit(pet: np.ndarray) -> np.ndarray:
    """A pet probability in [0, 1] (any shape) -> uint8 0-255, rounded half to even."""
    return np.round(np.asarray(pet, dtype=np.float32) * 255).astype(np.uint8)


def at_image_sizes(pet_8bit: np.ndarray, images: list[np.ndarray]) -> list[np.ndarray]:
    """(N, h, w) uint8 probabilities at the model's size -> one (H, W) map per image, at its own size."""
    return [resize(p, image.shape[:2]) for p, image in zip(pet_8bit, images)]


def pet_mask(probability: np.ndarray) -> np.ndarray:
    """An 8-bit probability map -> the 0/255 mask ``infer`` writes (uint8 throughout: no int64 temporary,
    so a full-size mask costs 2 bytes per pixel at its peak, the comparison and the mask)."""
    return np.where(probability >= PET_THRESHOLD, np.uint8(MASK_ON), np.uint8(0))
