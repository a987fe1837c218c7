"""What ``POST /v1/masks`` answers: the mask PNG (the same pixels and encoding as ``petseg infer``), the
probability PNG (as ``infer --probs``), an overlay PNG, the cut-out PNG (as ``infer --cutout``, on a
``background`` colour if asked), one COCO results entry (as ``infer --coco``), or JSON with the mask as
run-length encoding; chosen by the ``format`` parameter or the Accept header. The mask is the model's
threshold unless the ``threshold`` parameter sets another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..predict.outputs import coco_result, cutout, foreground_share, overlay_png, parse_colour, png_bytes, run_lengths
from .uploads import ClientError

if TYPE_CHECKING:
    import numpy as np

PNG, JSON = "image/png", "application/json"
MASK, PROBS, OVERLAY, CUTOUT, COCO, JSON_FORMAT = "mask", "probs", "overlay", "cutout", "coco", "json"
FORMATS = {MASK: PNG, PROBS: PNG, OVERLAY: PNG, CUTOUT: PNG, COCO: JSON, JSON_FORMAT: JSON}  # ``format`` -> media type
COCO_IMAGE_ID = 1  # the one image of a format=coco answer
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
    """One of ``FORMATS``: the ``format`` parameter if given, else the Accept header's choice."""
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
        406, f"This endpoint answers {PNG} (the mask; format=probs, overlay or cutout for the others) or {JSON}, which the Accept header does not allow."
    )


@dataclass(frozen=True)
class Asked:
    """What a request's query asks for, checked before its body is read."""

    format: str
    threshold: float | None = None  # None: the model's
    background: tuple[int, int, int] | None = None  # format=cutout only: RGB on this colour


def _threshold(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ClientError(400, f"threshold must be a probability between 0 and 1 (exclusive), not {text!r}.")
    return value


def _background(text: str | None, fmt: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    if fmt != CUTOUT:
        raise ClientError(400, f"background applies to format={CUTOUT} only, not format={fmt}.")
    try:
        return parse_colour(text)
    except ValueError:
        raise ClientError(400, f"background {text!r} is not a colour: use #rrggbb, #rgb or a name such as white.") from None


def asked(query: Mapping[str, str], accept: str | None) -> Asked:
    """The request's ``format`` (or Accept header), ``threshold`` and ``background``; 400 or 406 if bad."""
    fmt = choose_format(query.get("format"), accept)
    return Asked(fmt, _threshold(query.get("threshold")), _background(query.get("background"), fmt))


@dataclass(frozen=True)
class Picture:
    """One answered photo: what every format is drawn from."""

    image: "np.ndarray"  # (H, W, 3) uint8 RGB
    probability: "np.ndarray"  # (H, W) uint8, 255 = 1.0
    mask: "np.ndarray"  # (H, W) 0/255 at the threshold
    name: str  # the upload's file name
    background: tuple[int, int, int] | None
    facts: dict[str, Any]  # run, model, timing: for format=json


def _json_document(picture: Picture) -> bytes:
    height, width = picture.mask.shape
    document = {
        **picture.facts, "width": width, "height": height, "foreground": round(foreground_share(picture.mask), 6),
        "rle": run_lengths(picture.mask),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _coco_document(picture: Picture) -> bytes:
    entry = coco_result(COCO_IMAGE_ID, picture.name, picture.probability, picture.mask)
    return json.dumps(entry, separators=(",", ":")).encode()


RENDERERS: dict[str, Callable[[Picture], bytes]] = {
    MASK: lambda p: png_bytes(p.mask),
    PROBS: lambda p: png_bytes(p.probability),
    OVERLAY: lambda p: overlay_png(p.image, p.mask),
    CUTOUT: lambda p: png_bytes(cutout(p.image, p.probability, p.background)),
    COCO: _coco_document,
    JSON_FORMAT: _json_document,
}


def render(
    ask: Asked, threshold: float, image: "np.ndarray", probability: "np.ndarray", name: str, facts: dict[str, Any]
) -> tuple[bytes, float]:
    """The answer's body in ``ask.format`` (its media type is ``FORMATS[ask.format]``) and the foreground
    share, from the 8-bit pet probability thresholded at ``threshold`` as ``petseg infer`` does; ``facts``
    (run, model, timing) go into JSON."""
    from ..data.masks import pet_mask

    mask = pet_mask(probability, threshold)
    picture = Picture(image, probability, mask, name, ask.background, facts)
    return RENDERERS[ask.format](picture), foreground_share(mask)
