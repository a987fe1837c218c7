"""Photos with damaged metadata, for the fuzz tests: generated JPEGs and PNGs carrying an EXIF block
(orientation, camera tags, a GPS IFD), an XMP packet and an ICC profile, and seeded corruptions of the
bytes of one of those blocks (the file's structure, segment lengths and PNG CRCs, stays valid, as when
an editor or a messenger rewrites the metadata badly)."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6" tiff:Make="Camera"/>'
    b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
KINDS = ("exif", "xmp", "icc")


def camera_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model 7"
    exif[0x0131] = "Editor 1.0"
    exif[0x0132] = "2024:01:02 03:04:05"
    exif[0x011A] = 72.0
    exif[0x011B] = 72.0
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    return exif.tobytes()


def icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo(rng: np.random.Generator, height: int = 24, width: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg_with_metadata(pixels: np.ndarray) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A JPEG with EXIF, XMP and ICC segments, and each segment payload's (start, end) in the file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=camera_exif(), icc_profile=icc_profile())
    data = buffer.getvalue()
    xmp_segment = b"\xff\xe1" + struct.pack(">H", len(XMP_APP1) + len(XMP) + 2) + XMP_APP1 + XMP
    data = data[:2] + xmp_segment + data[2:]  # right after SOI
    return data, jpeg_segments(data)


def jpeg_segments(data: bytes) -> dict[str, tuple[int, int]]:
    found, at = {}, 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xDA, 0xD9):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        payload = data[at + 4 : at + 2 + length]
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            found["exif"] = (at + 4 + 6, at + 2 + length)
        elif marker == 0xE1 and payload.startswith(XMP_APP1):
            found["xmp"] = (at + 4 + len(XMP_APP1), at + 2 + length)
        elif marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
            found["icc"] = (at + 4 + 14, at + 2 + length)
        at += 2 + length
    return found


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_metadata(pixels: np.ndarray) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A PNG with eXIf, iTXt XMP and iCCP chunks (the ICC profile stored raw in a zlib stream of level
    0, so that corrupting it damages the profile, not only the compression)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    chunks = {
        "exif": png_chunk(b"eXIf", camera_exif()),
        "xmp": png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP),
        "icc": png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc_profile(), 0)),
    }
    at = 8 + 25  # after the signature and IHDR
    spans = {}
    for kind, chunk in chunks.items():
        spans[kind] = (at + 8, at + len(chunk) - 4)
        data = data[:at] + chunk + data[at:]
        at += len(chunk)
    return data, spans


@dataclass(frozen=True)
class Case:
    data: bytes
    description: str


def corrupt(data: bytes, span: tuple[int, int], rng: np.random.Generator, png: bool) -> bytes:
    """Change 1-4 bytes inside ``span`` (a payload), or cut the payload short in the middle by zeroing
    its tail; for a PNG, the chunk's CRC is recomputed so the chunk is well-formed and only its content broken."""
    start, end = span
    body = bytearray(data[start:end])
    if rng.random() < 0.15:
        cut = int(rng.integers(0, len(body)))
        body[cut:] = bytes(len(body) - cut)
    else:
        for _ in range(int(rng.integers(1, 5))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
    out = bytearray(data[:start] + bytes(body) + data[end:])
    if png:
        kind_at = start - 4
        crc = zlib.crc32(bytes(out[kind_at:end])) & 0xFFFFFFFF
        out[end : end + 4] = struct.pack(">I", crc)
    return bytes(out)


def cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` damaged photos: JPEG and PNG in turn, the damaged block in turn, the bytes by ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = photo(rng)
    originals = {"jpeg": jpeg_with_metadata(pixels), "png": png_with_metadata(pixels)}
    made = []
    for i in range(count):
        fmt = ("jpeg", "png")[i % 2]
        kind = KINDS[(i // 2) % len(KINDS)]
        data, spans = originals[fmt]
        made.append(Case(corrupt(data, spans[kind], rng, fmt == "png"), f"{fmt} {kind} #{i}"))
    return made


def broken_exif() -> bytes:
    """A camera EXIF block whose TIFF header is damaged (byte order "MX"): Pillow opens the photo, then
    raises SyntaxError reading the orientation, as photos rewritten by some messengers make it do."""
    good = camera_exif()
    assert good.startswith(b"Exif\x00\x00MM\x00*")
    return b"Exif\x00\x00MX" + good[8:]


def jpeg_with_broken_exif(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=broken_exif())
    return buffer.getvalue()
