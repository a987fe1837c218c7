"""What every predictor shares: ``ModelInfo``, and ``Predictor``, whose backends (torch_predictor,
onnx_predictor) give log-probabilities for a batch at the model's size while the steps around them (resize
to the model, 8-bit probability, resize back to each photo) are written here once. numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..data.masks import DEFAULT_THRESHOLD, at_image_sizes, model_batch, to_8bit
from .metadata import PET_CLASS

DEFAULT_WEIGHTS = "best"


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: the startup lines and ``GET /v1/model`` show it."""

    name: str  # the run's name, or the model file's stem
    model: str  # the architecture, as `petseg compare` labels it
    parameters: int | None  # None where the model file does not say
    image_size: int  # the square size the model sees
    val_dice: float | None  # best validation Dice of the run, when known
    source: str  # the run directory or the file it came from
    backend: str  # torch, onnxruntime or openvino
    device: str
    precision: str  # fp32, bf16, fp16 or int8
    weights: str = DEFAULT_WEIGHTS  # the run's checkpoint it holds (best or last)
    threshold: float = DEFAULT_THRESHOLD  # the mask's: the one the run chose on its val split, else 0.5
    runtime_choice: str | None = None  # --runtime auto: what it chose for an exported file, and why
    threshold_reason: str = ""  # where the threshold came from, in words
    checkpoint_epoch: int | None = None  # a run's: the epoch its weights are from
    checkpoint_weights: str | None = None  # a run's: raw or ema
    channels_last: bool | None = None  # a run's: the memory format it computes in

    def threshold_line(self) -> str:
        """``threshold 0.42 (tuned for best weights, no TTA …)``: which threshold masks are cut at, and why."""
        return f"threshold {self.threshold:g}" + (f" ({self.threshold_reason})" if self.threshold_reason else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float logits -> float32 log-probabilities over C."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def flip_average(log_p: np.ndarray, flipped_log_p: np.ndarray) -> np.ndarray:
    """The log of the mean of two probability maps (an image's and its flip's, flipped back)."""
    return np.logaddexp(log_p, flipped_log_p[..., ::-1]) - np.float32(np.log(2))


class Predictor:
    """A loaded model. Backends implement ``log_probabilities``; everything else is shared."""

    info: ModelInfo
    scales: tuple[float, ...] = ()  # multi-scale TTA's scales of the model's size (multiscale.py); (): its own only

    @property
    def image_size(self) -> int:
        return self.info.image_size

    def log_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, H, W, 3) uint8 at the model's size (H, W multiples of 32) -> (N, C, H, W) float32
        log-probabilities; with ``tta`` those of the mean of the image's and its flip's softmax."""
        raise NotImplementedError

    def pet_probability(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, S, S) float32 pet probability."""
        return np.exp(self.log_probabilities(batch, tta)[:, PET_CLASS])

    def pet_probabilities_at(self, batch: np.ndarray, shapes: list[tuple[int, ...]], tta: bool = False) -> list[np.ndarray]:
        """A batch already at the model's size -> each one's 8-bit pet probability at ``shapes[i]``."""
        return at_image_sizes(to_8bit(self.pet_probability(batch, tta)), shapes)

    def pet_probabilities(self, images: list[np.ndarray], tta: bool = False) -> list[np.ndarray]:
        """Decoded (H, W, 3) uint8 RGB photos -> each one's 8-bit pet probability (255 = 1.0) at its own
        H x W; ``masks.pet_mask`` turns one into the 0/255 mask. One call is one batch."""
        if not images:
            return []
        return self.pet_probabilities_at(model_batch(images, self.image_size), [i.shape for i in images], tta)

    def describe(self) -> str:
        """The line that says which model answers."""
        i = self.info
        dice = f"{i.val_dice:.4f}" if i.val_dice is not None else "unknown"
        weights = f" {i.weights}.pth" if i.backend == "torch" else ""
        return f"using {i.source}{weights} ({i.model}, best val Dice {dice}; {i.backend} on {i.device}, {i.precision})"


