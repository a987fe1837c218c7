"""The time left for the whole run, and the timed step that estimates it before the first epoch."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import torch

from ..formatting import duration

if TYPE_CHECKING:
    from .setup import Training


class RunClock:
    """The time left for the whole run: from a timed step before the first epoch, then from the epochs."""

    def __init__(self, epochs_left: int, estimated_epoch_seconds: float | None) -> None:
        self.epochs_left = epochs_left
        self.epoch_seconds = estimated_epoch_seconds
        self.finished: list[float] = []

    def epoch_done(self, seconds: float) -> None:
        self.finished.append(seconds)
        self.epochs_left -= 1
        self.epoch_seconds = sum(self.finished) / len(self.finished)

    def left(self) -> str:
        return "?" if self.epoch_seconds is None else duration(self.epochs_left * self.epoch_seconds)

    def left_during_training(self, done: float, elapsed: float) -> str:
        """Left for the run, ``done`` (0-1) of the current epoch's training having taken ``elapsed`` s."""
        if self.epoch_seconds is None:
            return "?"
        in_epoch = max(self.epoch_seconds - elapsed, 0.0) if self.finished else self.epoch_seconds * (1 - done)
        return duration(in_epoch + (self.epochs_left - 1) * self.epoch_seconds)


def estimate_epoch_seconds(training: Training) -> float | None:
    """One epoch's training and validation, from one timed step (validation: a forward pass, about a third)."""
    step = time_one_step(training)
    if step is None:
        return None
    return step * (len(training.train_loader) + len(training.val_loader) / 3)


def time_one_step(training: Training) -> float | None:
    """Seconds of one training step (forward and backward on a batch of random images), timed before
    the first epoch; nothing of the model, its statistics or the random state changes. None with
    a compiled model (its first step compiles, which says nothing of the others)."""
    if training.compiled.enabled:
        return None
    size, batch = training.settings.data.image_size, training.dist.per_rank_batch(training.settings.train.batch_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).to(training.device, memory_format=training.memory_format)
    masks = torch.randint(0, 2, (batch, size, size), generator=generator).to(training.device)
    buffers = copy.deepcopy(dict(training.model.named_buffers()))  # BatchNorm statistics
    training.model.train()
    seconds = []
    for _ in range(2):  # the first step allocates and warms up: time the second
        started = time.perf_counter()
        with training.precision.autocast():
            loss = training.loss_fn(training.model(images), masks)
        loss.backward()
        if training.device.type == "cuda":
            torch.cuda.synchronize(training.device)
        seconds.append(time.perf_counter() - started)
    training.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in training.model.named_buffers():
            buffer.copy_(buffers[name])
    return seconds[-1]

