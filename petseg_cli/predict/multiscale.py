"""Multi-scale test-time augmentation: a ``Predictor`` that runs another at several sizes and averages.

``MultiScale(predictor, (0.75, 1.0, 1.25))`` resizes each batch (at the model's size S) to about 0.75 S,
S and 1.25 S (each side rounded to a multiple of 32, the models' stride), lets the wrapped predictor give
its softmax there (with its flip TTA when asked), resizes each back to S and averages the probabilities.
It costs the sum of the squared scales times one pass: 3.1 for those three, twice that with flips.
numpy and PIL only, so it wraps every backend whose model takes other sizes than its own.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..base.errors import UsageError
from ..data.images import resize
from .prediction import Predictor

STRIDE = 32  # the models' input sides are multiples of this
MIN_SCALE, MAX_SCALE = 0.25, 4.0
TINY = np.float32(1e-30)  # keeps log() finite where every scale says 0


def parse_scales(text: str | None) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` -> (0.75, 1.0, 1.25); None or "" -> () (no multi-scale); a UsageError otherwise."""
    if not text:
        return ()
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--tta-scales takes comma-separated numbers, e.g. 0.75,1,1.25; got {text!r}") from None
    if len(scales) < 2 or len(set(scales)) != len(scales):
        raise UsageError(f"--tta-scales needs two or more different scales (e.g. 0.75,1,1.25); got {text!r}")
    if not all(MIN_SCALE <= s <= MAX_SCALE for s in scales):
        raise UsageError(f"--tta-scales: each scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}; got {text!r}")
    return scales


def scaled_side(size: int, scale: float) -> int:
    """The model's side ``size`` times ``scale``, rounded (half up) to a multiple of STRIDE, at least STRIDE."""
    return max(STRIDE, int(size * scale / STRIDE + 0.5) * STRIDE)


def resize_probabilities(probabilities: np.ndarray, side: int) -> np.ndarray:
    """(N, C, h, w) float32 probabilities -> (N, C, side, side), bilinear, each map on its own."""
    out = np.empty((*probabilities.shape[:2], side, side), np.float32)
    for n, maps in enumerate(probabilities):
        for c, plane in enumerate(maps):
            out[n, c] = np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize((side, side), Image.BILINEAR))
    return out


class MultiScale(Predictor):
    """``predictor``'s log-probabilities averaged (as probabilities) over ``scales`` of its size."""

    def __init__(self, predictor: Predictor, scales: tuple[float, ...]) -> None:
        self.predictor = predictor
        self.scales = scales
        self.info = predictor.info

    def sides(self, size: int) -> list[int]:
        """The sides it predicts at for a batch of ``size`` (the model's): each once, though two scales round alike."""
        return list(dict.fromkeys(scaled_side(size, scale) for scale in self.scales))

    def log_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        size = batch.shape[1]
        sides = self.sides(size)
        total: np.ndarray | None = None
        for side in sides:
            resized = batch if side == size else np.stack([resize(image, (side, side)) for image in batch])
            probabilities = np.exp(self.predictor.log_probabilities(resized, tta))
            if side != size:
                probabilities = resize_probabilities(probabilities, size)
            total = probabilities if total is None else total + probabilities
        assert total is not None  # parse_scales gives two scales or more
        return np.log(np.maximum(total / np.float32(len(sides)), TINY))

