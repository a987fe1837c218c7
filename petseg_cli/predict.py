"""Running a trained run's model on uint8 images: the forward pass that ``evaluate`` and ``infer`` share."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.transforms import normalize
from .masks import at_image_sizes, model_batch, to_8bit
from .model_metadata import PET_CLASS
from .machine.precision import Precision, choose_channels_last
from .runs import load_run_model
from .settings import Settings


def load_model(run_dir: Path, weights: str, device: torch.device) -> tuple[nn.Module, Settings, dict[str, Any]]:
    """The run's model with ``best.pth`` or ``last.pth`` loaded, on ``device``, in eval mode."""
    model, settings, checkpoint = load_run_model(run_dir, weights)
    return model.to(device).eval(), settings, checkpoint


def to_tensor(
    images: np.ndarray, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor on ``device``, in ``memory_format``."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
    return batch.contiguous(memory_format=memory_format)


@torch.inference_mode()
def log_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    normalization: str,
    tta: bool = False,
    precision: Precision | None = None,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, C, H, W) float32 log-softmax of the model's logits, the images normalised
    as the run was trained (its config.toml's ``data.normalization``), computed in ``precision`` (fp32
    when None) as training's validation does.

    With ``tta``, the softmax of the image and of its horizontal flip (flipped back) are averaged.
    """
    autocast = precision.autocast() if precision is not None else nullcontext()
    x = normalize(images, normalization)
    with autocast:
        log_p = model(x).float().log_softmax(1)
        if tta:
            flipped = model(x.flip(-1)).float().log_softmax(1).flip(-1)
            log_p = torch.logaddexp(log_p, flipped) - math.log(2)
    return log_p


@dataclass(frozen=True)
class Arithmetic:
    """The precision and memory format a run's model computes in on this machine."""

    precision: Precision
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def run_arithmetic(settings: Settings, device: torch.device, precision: str | None = None) -> Arithmetic:
    """What training would compute in on ``device`` with the run's settings (``precision`` overrides the
    run's ``train.precision``): evaluating the same way reproduces the figures of its validation."""
    resolved = Precision.resolve(precision or settings.train.precision, device)
    return Arithmetic(resolved, choose_channels_last(settings.train.channels_last, device.type, resolved.name))


class TorchPredictor:
    """A run's model in torch, with the interface of ``onnx_model.OnnxPredictor`` (``infer`` uses either)."""

    def __init__(self, run_dir: Path, weights: str, device: torch.device) -> None:
        self.model, self.settings, self.checkpoint = load_model(run_dir, weights, device)
        self.device, self.image_size = device, self.settings.data.image_size

    def pet_probabilities(self, images: list[np.ndarray], tta: bool = False) -> list[np.ndarray]:
        """Decoded (H, W, 3) uint8 RGB images -> each one's 8-bit pet probability at its own H x W."""
        if not images:
            return []
        batch = to_tensor(model_batch(images, self.image_size), self.device)
        pet = log_probabilities(self.model, batch, self.settings.data.normalization, tta)[:, PET_CLASS].exp()
        return at_image_sizes(to_8bit(pet.cpu().numpy()), images)
