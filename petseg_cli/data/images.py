"""Decoding image files by their content, whatever their extension says.

The Oxford-IIIT Pet release has ``.jpg`` files that are PNG (RGBA) or GIF; users' photos add
16-bit PNGs, CMYK JPEGs and EXIF rotations. Everything comes out as 8-bit RGB (or one channel for masks).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

Warn = Callable[[str], None]
ORIENTATION_TAG = 0x0112

# Refuse decompression bombs, but allow large real photos (10000x8000 and more): the limit for a file read
# without a caller's own, checked from the header before decoding. Pillow's process-wide setting
# (Image.MAX_IMAGE_PIXELS) is left as the process has it: by default it refuses over 178,956,970 pixels.
MAX_PIXELS = 150_000_000


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
    """Open and decode ``source``, refusing more than ``max_pixels`` (default MAX_PIXELS) from the header
    alone, before decoding."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        image = Image.open(source)
        if image.width * image.height > max_pixels:
            raise TooManyPixelsError.of(
                name, f"{image.width}x{image.height} pixels is more than the limit of {max_pixels:,}"
            )
        image.load()  # decode now, so a truncated or corrupt file fails here
        return image
    except DecodeError:
        raise
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
    except Exception as exc:  # a parser's slip on damaged data (struct.error, TypeError, IndexError …)
        raise DecodeError.of(name, f"cannot decode ({_describe(exc)})") from None


def _describe(exc: Exception) -> str:
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"{module}{kind.__qualname__}: {exc}"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DecodeError.of(path, "no such file") from None
    except IsADirectoryError:
        raise DecodeError.of(path, "is a directory") from None
    except OSError as exc:
        raise DecodeError.of(path, f"cannot read ({exc.strerror or exc})") from None


def _open_bytes(data: bytes, name: object, max_pixels: int | None, warn: Warn) -> Image.Image:
    """``_open`` on bytes; a file that fails only because of its metadata (EXIF, XMP, ICC, text) is
    decoded again without it, with one warning."""
    try:
        return _open(io.BytesIO(data), name, max_pixels)
    except TooManyPixelsError:
        raise
    except DecodeError as exc:  # Pillow calls a PNG whose iCCP chunk is damaged "not an image"
        stripped = without_metadata(data)
        if stripped is None:
            raise
        try:
            image = _open(io.BytesIO(stripped), name, max_pixels)
        except DecodeError:
            raise exc from None
        warn(f"{name}: its metadata (EXIF, XMP or ICC) is damaged and was ignored ({exc.reason})")
        return image


# EXIF orientation -> the transpose that shows the photo upright (Pillow's ``exif_transpose`` table).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _oriented(image: Image.Image, name: object, warn: Warn) -> Image.Image:
    """``image`` turned upright as its EXIF orientation says; an EXIF block that cannot be read counts as
    absent. (Not ``ImageOps.exif_transpose``: it also rewrites the EXIF block, which fails on damaged
    blocks, and copies the image when there is nothing to turn.)"""
    try:
        raw = image.info.get("exif")
        if raw:  # parsed afresh: Pillow may have met (and hidden) the damage while opening the file
            Image.Exif().load(raw)
        orientation = image.getexif().get(ORIENTATION_TAG)
    except Exception as exc:  # Pillow's EXIF parser raises whatever a damaged block makes it
        warn(f"{name}: its EXIF block is damaged and was ignored ({_describe(exc)})")
        return image
    method = UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: keep the top 8 bits
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode != "I" or array.max() > 255 else 255
        image = Image.fromarray((array * 255 // max(peak, 1)).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def pil_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image of any mode as (H, W, 3) uint8, as a file of that mode is read (16-bit: its top 8
    bits; alpha dropped; a palette's colours)."""
    return np.asarray(_to_rgb(image))


def _rgb_array(image: Image.Image, name: object, exif_orientation: bool, warn: Warn) -> np.ndarray:
    """The pixels as (H, W, 3) uint8. The only reference to ``image`` is this function's, so each
    intermediate image is freed as the next is made (about 10 bytes per pixel at the peak)."""
    if exif_orientation:
        image = _oriented(image, name, warn)
    return pil_rgb(image)


def default_warn(message: str) -> None:
    from ..base.console import warn

    warn(message)


def read_rgb(path: str | Path, exif_orientation: bool = False, warn: Warn | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 array. ``exif_orientation`` rotates as a viewer would show the photo. Damaged
    metadata is ignored with one line to ``warn`` (default: a warning on stderr); anything else that
    keeps the file from decoding is a ``DecodeError``."""
    path = Path(path)
    return decode_rgb(_read_bytes(path), path, None, exif_orientation, warn)


def decode_rgb(
    data: bytes, name: object, max_pixels: int | None = None, exif_orientation: bool = True, warn: Warn | None = None
) -> np.ndarray:
    """``read_rgb`` for bytes in memory (an upload), refusing more than ``max_pixels`` before decoding."""
    warn = warn or default_warn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter; real failures raise
        try:
            return _rgb_array(_open_bytes(data, name, max_pixels, warn), name, exif_orientation, warn)
        except (OSError, ValueError) as exc:  # a mode Pillow cannot convert
            raise DecodeError.of(name, f"cannot decode ({exc})") from None


def read_label(path: str | Path, warn: Warn | None = None) -> np.ndarray:
    """An (H, W) uint8 array of a single-channel label image (a trimap)."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _open_bytes(_read_bytes(path), path, None, warn or default_warn)
    if image.mode not in ("L", "P", "I", "I;16"):
        image = image.convert("L")
    return np.asarray(image).astype(np.uint8)


JPEG_METADATA = {0xE1, 0xE2, 0xED, 0xFE}  # APP1 (EXIF, XMP), APP2 (ICC, MPF), APP13 (IPTC), COM
PNG_METADATA = {b"eXIf", b"iTXt", b"zTXt", b"tEXt", b"iCCP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_metadata(data: bytes) -> bytes | None:
    """A JPEG's or PNG's bytes without its metadata segments or chunks (pixels untouched); None for
    other formats, a file whose structure is itself broken, or one that has no metadata to remove."""
    if data.startswith(b"\xff\xd8"):
        kept, at = [data[:2]], 2
        while True:
            if at + 4 > len(data) or data[at] != 0xFF:
                return None
            marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
            if marker == 0xDA:  # start of scan: the rest is pixels
                kept.append(data[at:])
                break
            if marker not in JPEG_METADATA:
                kept.append(data[at : at + 2 + length])
            at += 2 + length
    elif data.startswith(PNG_SIGNATURE):
        kept, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
        while at + 12 <= len(data):
            length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
            if kind not in PNG_METADATA:
                kept.append(data[at : at + 12 + length])
            at += 12 + length
    else:
        return None
    stripped = b"".join(kept)
    return stripped if len(stripped) < len(data) else None


def resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, C]) uint8 array to ``size`` = (height, width), bilinear or nearest."""
    if array.shape[:2] == size:
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))
