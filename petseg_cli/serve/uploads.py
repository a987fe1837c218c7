"""A request's image: the body (raw, or the multipart field ``file``) read within the size limit, then
decoded as ``petseg infer`` decodes a file, after its declared pixel count has been checked.

Every way a request can fail here is a ``ClientError``: an HTTP status and one sentence for the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable

    import numpy as np
    from starlette.requests import Request

MULTIPART = "multipart/form-data"
FIELD = "file"
ENVELOPE_BYTES = 64 * 1024  # room for a multipart body's boundaries and part headers
MEBIBYTE = 1024 * 1024
RAW_UPLOAD_NAME = "upload"
READABLE = "JPEG, PNG, GIF, BMP, WebP or TIFF"


class ClientError(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-sentence ``message`` for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def too_large(max_bytes: int) -> ClientError:
    return ClientError(413, f"The image is larger than this server's limit of {max_bytes / MEBIBYTE:g} MiB (--max-image-mb).")


async def read_upload(request: "Request", max_bytes: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and name; nothing past the limit is read."""
    from starlette.requests import ClientDisconnect

    multipart = request.headers.get("content-type", "").lower().startswith(MULTIPART)
    body_limit = max_bytes + (ENVELOPE_BYTES if multipart else 0)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise too_large(max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > body_limit:
                raise too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientError(400, "The client closed the connection before the body was complete.") from None
    body = b"".join(chunks)
    data, name = await _multipart_file(request, body, max_bytes) if multipart else (body, RAW_UPLOAD_NAME)
    if not data:
        raise ClientError(400, f"The request has no image: send one as the body, or as the multipart field '{FIELD}'.")
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data, name


async def _multipart_file(request: "Request", body: bytes, max_bytes: int) -> tuple[bytes, str]:
    """The field ``file`` of a multipart body already read into memory (Starlette parses it)."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def replay() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=1, max_part_size=max_bytes) as form:
            field = form.get(FIELD)
            if field is None:
                raise ClientError(400, f"The multipart body has no field '{FIELD}': send the image as {FIELD}=@photo.jpg.")
            if not isinstance(field, UploadFile):
                raise ClientError(400, f"The multipart field '{FIELD}' must be a file (a part with a filename), not text.")
            return await field.read(), field.filename or RAW_UPLOAD_NAME
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ClientError(400, f"The multipart body cannot be parsed: {str(detail).rstrip('.')}.") from None


async def discard_body(request: "Request", max_bytes: int) -> None:
    """Read the body of a request that is refused before its body was needed, dropping each chunk: the
    client, still sending, then gets its answer rather than a reset connection. Past ``max_bytes`` (and
    the multipart envelope) the rest is left, and the connection closes after the answer."""
    from starlette.requests import ClientDisconnect

    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > max_bytes + ENVELOPE_BYTES:
                return
    except ClientDisconnect:
        return


def decode_upload(
    data: bytes, name: str, max_pixels: int, warn: "Callable[[str], None] | None" = None
) -> "np.ndarray":
    """The (H, W, 3) uint8 photo as a viewer shows it, exactly as ``petseg infer`` reads a file (damaged
    metadata ignored with one line to ``warn``)."""
    from ..data.images import DecodeError, NotAnImageError, TooManyPixelsError, decode_rgb

    try:
        return decode_rgb(data, name, max_pixels=max_pixels, exif_orientation=True, warn=warn)
    except TooManyPixelsError as exc:
        raise ClientError(413, f"The image is too large to decode: {exc.reason} (--max-pixels).") from None
    except NotAnImageError:
        raise ClientError(415, f"The upload is not an image petseg can read ({READABLE}).") from None
    except DecodeError as exc:
        raise ClientError(422, f"The image is damaged or truncated: {exc.reason}.") from None
