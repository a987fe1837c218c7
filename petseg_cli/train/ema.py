"""An exponential moving average of the weights (and BatchNorm statistics), validated and saved instead
of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .callbacks import Callback, Loop


class WarmEMA:
    """The average's decay warms up: update n (from 0) uses min(decay, (1 + n) / (10 + n)), as
    TensorFlow's ExponentialMovingAverage does with ``num_updates``. With a fixed 0.99 a run of a few
    dozen steps would keep mostly its random first weights; warmed up, the average follows the model
    early and smooths it once it has many steps behind it.

    (torch's AveragedModel keeps its update count on the device: a decay computed from it would make
    the host wait for the device at every step. Here the count is a Python int.)"""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model`` (the module this average was made from, or one like it)."""
        mine, theirs = self.module.state_dict(), model.state_dict()  # tensors that share the weights' storage
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        others = [k for k, v in mine.items() if not v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([mine[k] for k in floats], [theirs[k] for k in floats], 1.0 - self.current_decay())
        for k in others:
            mine[k].copy_(theirs[k])
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load(self, state_dict: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state_dict)
        self.updates = updates


class UpdateEMA(Callback):
    """The training's average takes a step towards the model after every optimiser step."""

    def __init__(self, ema: WarmEMA, model: nn.Module) -> None:
        self.ema, self.model = ema, model

    def on_step_end(self, loop: Loop) -> None:
        self.ema.update(self.model)
