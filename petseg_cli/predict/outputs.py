"""What predictions become: 0/255 masks, 8-bit probability maps and overlays as PNG or JPEG bytes or
files, and COCO's run-length encoding. ``infer`` writes them, ``serve`` answers them: the same pixels and
the same encoding either way.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..base import files

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
    """A gray, RGB or RGBA uint8 array as a PNG file, written atomically."""
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


# A cut-out's alpha rises from 0 to 255 as the pet probability goes from 0.25 to 0.75: solid where the
# model is sure, transparent where it is sure of background, soft in between (no jagged edge). At the
# mask's threshold (0.5) the alpha is one half.
ALPHA_RAMP = 2


def cutout_alpha(probability: np.ndarray) -> np.ndarray:
    """An (H, W) 8-bit pet probability -> the (H, W) uint8 alpha of its cut-out."""
    ramp = (probability.astype(np.int16) - 128) * ALPHA_RAMP + 128
    return np.clip(ramp, 0, 255).astype(np.uint8)


def cutout(image: np.ndarray, probability: np.ndarray, background: tuple[int, int, int] | None = None) -> np.ndarray:
    """The photo's pet: RGBA with the alpha of ``cutout_alpha``, or, with a ``background`` colour, RGB
    with the photo blended over that colour by the same alpha."""
    alpha = cutout_alpha(probability)
    if background is None:
        return np.dstack([image, alpha])
    weight = alpha[..., None].astype(np.float32) / 255
    blended = image.astype(np.float32) * weight + np.asarray(background, np.float32) * (1 - weight)
    return np.round(blended).astype(np.uint8)


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#ffffff', '#fff', 'white', 'rgb(255,255,255)' … -> (r, g, b); ValueError for anything else."""
    from PIL import ImageColor

    rgb = ImageColor.getrgb(text)
    if not all(0 <= c <= 255 for c in rgb):  # PIL passes 'rgb(999,0,0)' and 'hsl(0,200%,50%)' through
        raise ValueError(f"colour components out of 0-255: {text!r}")
    return rgb[0], rgb[1], rgb[2]


def write_cutout(path: Path, image: np.ndarray, probability: np.ndarray, background: tuple[int, int, int] | None) -> None:
    write_png(path, cutout(image, probability, background))


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a 0/non-0 mask, as pycocotools writes it in results files."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray((mask != 0).astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def coco_result(image_id: int, file_name: str, probability: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """One entry of a COCO results file: the mask as compressed RLE, scored by the mean pet probability
    over its pixels (0 for an empty mask)."""
    pet = mask != 0
    score = float(probability[pet].mean()) / 255 if pet.any() else 0.0
    return {
        "image_id": image_id, "file_name": file_name, "category_id": 1, "category_name": "pet",
        "segmentation": coco_rle(mask), "score": round(score, 6),
    }
