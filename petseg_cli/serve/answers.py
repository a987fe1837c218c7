"""What ``POST /v1/masks`` answers: the mask PNG (the same pixels and encoding as ``petseg infer``), the
probability PNG (as ``infer --probs``), an overlay PNG, or JSON with the mask as run-length encoding;
chosen by the ``format`` parameter or the Accept header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..outputs import foreground_share, overlay_png, png_bytes, run_lengths
from .uploads import ClientError

if TYPE_CHECKING:
    import numpy as np

PNG, JSON = "image/png", "application/json"
MASK, PROBS, OVERLAY, JSON_FORMAT = "mask", "probs", "overlay", "json"
FORMATS = {MASK: PNG, PROBS: PNG, OVERLAY: PNG, JSON_FORMAT: JSON}  # the ``format`` parameter -> media type
ACCEPTED = {PNG: MASK, "image/*": MASK, "*/*": MASK, JSON: JSON_FORMAT}  # an Accept media range -> format


def _media_ranges(accept: str) -> list[str]:
    """The media ranges of an Accept header, most preferred first; those with q=0 left out."""
    ranked = []
    for position, part in enumerate(accept.split(",")):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranked.append((-quality, position, media.lower()))
    return [media for _, _, media in sorted(ranked)]


def choose_format(requested: str | None, accept: str | None) -> str:
    """``mask``, ``overlay`` or ``json``: the ``format`` parameter if given, else the Accept header's choice."""
    if requested is not None:
        if requested not in FORMATS:
            raise ClientError(400, f"format must be one of {', '.join(FORMATS)}, not {requested!r}.")
        return requested
    if not accept or not accept.strip():
        return MASK
    for media in _media_ranges(accept):
        if media in ACCEPTED:
            return ACCEPTED[media]
    raise ClientError(
        406, f"This endpoint answers {PNG} (the mask; format=probs or format=overlay for the others) or {JSON}, which the Accept header does not allow."
    )


def _json_document(image: "np.ndarray", probability: "np.ndarray", mask: "np.ndarray", facts: dict[str, Any]) -> bytes:
    import json

    height, width = mask.shape
    document = {
        **facts, "width": width, "height": height, "foreground": round(foreground_share(mask), 6), "rle": run_lengths(mask),
    }
    return json.dumps(document, separators=(",", ":")).encode()


RENDERERS = {
    MASK: lambda image, probability, mask, facts: png_bytes(mask),
    PROBS: lambda image, probability, mask, facts: png_bytes(probability),
    OVERLAY: lambda image, probability, mask, facts: overlay_png(image, mask),
    JSON_FORMAT: _json_document,
}


def render(fmt: str, image: "np.ndarray", probability: "np.ndarray", facts: dict[str, Any]) -> tuple[bytes, float]:
    """The answer's body in ``fmt`` (its media type is ``FORMATS[fmt]``) and the foreground share, from the
    8-bit pet probability thresholded as ``petseg infer`` does; ``facts`` (run, model, timing) go into JSON."""
    from ..masks import pet_mask

    mask = pet_mask(probability)
    return RENDERERS[fmt](image, probability, mask, facts), foreground_share(mask)
