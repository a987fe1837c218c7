"""Running a trained run's model on uint8 images: the forward pass that ``evaluate`` and ``infer`` share."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.transforms import normalize
from .masks import at_image_sizes, model_batch, to_8bit
from .model_metadata import PET_CLASS
from .runs import load_run_model
from .settings import Settings


def load_model(run_dir: Path, weights: str, device: torch.device) -> tuple[nn.Module, Settings, dict[str, Any]]:
    """The run's model with ``best.pth`` or ``last.pth`` loaded, on ``device``, in eval mode."""
    model, settings, checkpoint = load_run_model(run_dir, weights)
    return model.to(device).eval(), settings, checkpoint


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


@torch.inference_mode()
def log_probabilities(model: nn.Module, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, C, H, W) log-softmax of the model's logits.

    With ``tta``, the softmax of the image and of its horizontal flip (flipped back) are averaged.
    """
    x = normalize(images)
    log_p = model(x).float().log_softmax(1)
    if tta:
        flipped = model(x.flip(-1)).float().log_softmax(1).flip(-1)
        log_p = torch.logaddexp(log_p, flipped) - math.log(2)
    return log_p


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
        pet = log_probabilities(self.model, batch, tta)[:, PET_CLASS].exp()
        return at_image_sizes(to_8bit(pet.cpu().numpy()), images)
