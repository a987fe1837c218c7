"""Decoding image files by their content, whatever their extension says.

The Oxford-IIIT Pet release has ``.jpg`` files that are PNG (RGBA) or GIF; users' photos add
16-bit PNGs, CMYK JPEGs and EXIF rotations. Everything comes out as 8-bit RGB (or one channel for masks).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs, but allow large real photos (10000x8000 and more).
Image.MAX_IMAGE_PIXELS = 200_000_000


class DecodeError(Exception):
    """A file that is not a readable image; the message says why (``reason``: why, without the file's name)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message

    @classmethod
    def of(cls, name: object, reason: str) -> "DecodeError":
        return cls(f"{name}: {reason}", reason)


class NotAnImageError(DecodeError):
    """Content that no image format recognises."""


class TooManyPixelsError(DecodeError):
    """An image whose declared width x height is over a caller's limit (a decompression bomb, or just huge)."""


def _is_empty(source: Path | BinaryIO) -> bool:
    try:
        return (source.stat().st_size if isinstance(source, Path) else source.seek(0, io.SEEK_END)) == 0
    except (OSError, ValueError):
        return False


def _open(source: Path | BinaryIO, name: object, max_pixels: int | None = None) -> Image.Image:
    """Open and decode ``source``; with ``max_pixels``, refuse from the header alone, before decoding."""
    try:
        image = Image.open(source)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooManyPixelsError.of(
                name, f"{image.width}x{image.height} pixels is more than the limit of {max_pixels:,}"
            )
        image.load()  # decode now, so a truncated or corrupt file fails here
        return image
    except FileNotFoundError:
        raise DecodeError.of(name, "no such file") from None
    except IsADirectoryError:
        raise DecodeError.of(name, "is a directory") from None
    except UnidentifiedImageError:
        raise NotAnImageError.of(name, "empty file" if _is_empty(source) else "not an image file") from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, checked while opening
        raise TooManyPixelsError.of(name, str(exc).split(",")[0]) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError.of(name, f"cannot decode ({exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: keep the top 8 bits
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode != "I" or array.max() > 255 else 255
        image = Image.fromarray((array * 255 // max(peak, 1)).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _rgb_array(image: Image.Image, exif_orientation: bool) -> np.ndarray:
    if exif_orientation:
        image = ImageOps.exif_transpose(image)
    return np.asarray(_to_rgb(image))


def read_rgb(path: str | Path, exif_orientation: bool = False) -> np.ndarray:
    """An (H, W, 3) uint8 array. ``exif_orientation`` rotates as a viewer would show the photo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter; real failures raise
        return _rgb_array(_open(Path(path), Path(path)), exif_orientation)


def decode_rgb(data: bytes, name: str, max_pixels: int | None = None, exif_orientation: bool = True) -> np.ndarray:
    """``read_rgb`` for bytes in memory (an upload), refusing more than ``max_pixels`` before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _rgb_array(_open(io.BytesIO(data), name, max_pixels), exif_orientation)


def read_label(path: str | Path) -> np.ndarray:
    """An (H, W) uint8 array of a single-channel label image (a trimap)."""
    image = _open(Path(path), Path(path))
    if image.mode not in ("L", "P", "I", "I;16"):
        image = image.convert("L")
    return np.asarray(image).astype(np.uint8)


def resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, C]) uint8 array to ``size`` = (height, width), bilinear or nearest."""
    if array.shape[:2] == size:
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))
