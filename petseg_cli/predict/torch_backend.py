"""A run directory's model on torch: the backend of ``predictor.open_predictor`` for runs.

It computes in the precision and memory format the run recorded (config.toml's [run]), so ``evaluate``,
``infer`` and ``serve`` give the figures and masks of the run's own validation, unless ``precision``
forces another.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import normalize
from ..machine.devices import resolve_device
from ..machine.precision import FP16, FP32, Precision, choose_channels_last
from ..models import count_parameters, model_label
from .prediction import ModelInfo, Predictor
from ..run import Run
from ..config.settings import Settings


def run_precision(settings: Settings, facts: dict, device: torch.device, forced: str | None) -> Precision:
    """``forced``, else what the run recorded it trained in, else its setting (runs that recorded none);
    fp16 (a GPU's) becomes fp32 on a CPU, which has no fp16 path."""
    name = forced or facts.get("precision") or settings.train.precision
    if forced is None and name == FP16 and device.type != "cuda":
        name = FP32
    return Precision.resolve(name, device)


class TorchPredictor(Predictor):
    """A run with ``best.pth`` or ``last.pth`` loaded on ``device``, in eval mode; its mask threshold the
    one tuned for those weights and ``tta`` (else the default)."""

    def __init__(self, run: Run, weights: str, device: str, precision: str | None, threads: int | None, tta: bool = False) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.settings = run.settings
        self.model, checkpoint = run.load_model(weights)
        self.precision = run_precision(self.settings, run.facts, self.device, precision)
        channels_last = choose_channels_last(self.settings.train.channels_last, self.device.type, self.precision.name)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=self.memory_format).eval()
        s = self.settings
        threshold = run.threshold_for(weights, tta)
        self.info = ModelInfo(
            name=run.name,
            model=model_label(s.model.name, s.model.cbam),
            parameters=count_parameters(self.model),
            image_size=s.data.image_size,
            val_dice=run.best_val_dice,
            source=str(run.path),
            backend="torch",
            device=str(self.device),
            precision=self.precision.name,
            weights=weights,
            threshold=threshold.value,
            threshold_reason=threshold.reason,
            checkpoint_epoch=checkpoint.get("epoch"),
            checkpoint_weights=checkpoint.get("weights", "raw"),
            channels_last=channels_last,
        )

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) uint8 on the device, in the run's memory format."""
        tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        return tensor.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def log_probabilities_tensor(self, batch: np.ndarray, tta: bool = False) -> torch.Tensor:
        """``log_probabilities`` on the device, as a tensor."""
        x = normalize(self.to_tensor(batch), self.settings.data.normalization)
        with self.precision.autocast():
            log_p = self.model(x).float().log_softmax(1)
            if tta:
                flipped = self.model(x.flip(-1)).float().log_softmax(1).flip(-1)
                log_p = torch.logaddexp(log_p, flipped) - np.log(2)
        return log_p

    def log_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        return self.log_probabilities_tensor(batch, tta).cpu().numpy()
