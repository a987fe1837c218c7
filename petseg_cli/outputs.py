"""What predictions become: 0/255 masks, 8-bit probability maps and overlays as PNG or JPEG bytes or
files, and COCO's run-length encoding. ``infer`` writes them, ``serve`` answers them: the same pixels and
the same encoding either way.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import files

OVERLAY_QUALITY = 90  # JPEG quality of overlay files


def save_png(f: IO[bytes], array: np.ndarray) -> None:
    """An (H, W) uint8 array as a gray PNG (masks and probability maps)."""
    from PIL import Image

    Image.fromarray(array).save(f, format="PNG")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    save_png(buffer, array)
    return buffer.getvalue()


def overlay_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    from .overlay import prediction_overlay

    buffer = io.BytesIO()
    prediction_overlay(image, mask).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_writer(path) as f:
        save_png(f, array)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    from .overlay import prediction_overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_writer(path) as f:
        prediction_overlay(image, mask).save(f, format="JPEG", quality=OVERLAY_QUALITY)


def foreground_share(mask: np.ndarray) -> float:
    """The fraction of the image's pixels that are pet."""
    return float((mask != 0).mean()) if mask.size else 0.0


def run_lengths(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: ``size`` [height, width] and ``counts`` of alternating runs over the pixels
    in column-major order, background first (so ``counts`` starts with 0 when the first pixel is pet)."""
    flat = (np.asarray(mask) != 0).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
