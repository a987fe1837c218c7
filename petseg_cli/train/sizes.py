"""Progressive resizing in a run (models/size_schedule.py says which size when): the train loader of
each epoch's size, what an epoch at a size costs (for a time budget's plan), and BatchNorm statistics
re-estimated at the final size.

Validation is always at the final size, so every epoch's val Dice compares with the others and the
best epoch is chosen among them fairly. Each rank derives the size from the epoch and the planned
epochs (the same in every rank), so all ranks train at the same size."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from ..models.size_schedule import SizeSchedule, parse_size_schedule
from .callbacks import Callback, Loop
from .loaders import load_part, loader_options, subset, train_loader
from .progress import Progress
from .setup import Training

# Validation is a forward pass (about a third of a training step per image), as clock.py estimates it;
# so is re-estimating BatchNorm statistics over the train split.
FORWARD_SHARE = 1 / 3


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def reestimate_batchnorm(net: torch.nn.Module, batches: Iterable[torch.Tensor]) -> bool:
    """Replace ``net``'s BatchNorm running statistics by their average over ``batches`` (one forward pass in
    training mode, nothing learnt: torch's update_bn, as SWA does); False when it has no BatchNorm."""
    from torch.optim.swa_utils import update_bn

    if not has_batchnorm(net):
        return False
    update_bn(batches, net)
    return True


class Resizing(Callback):
    """The sizes of a run with a size schedule: the train loader of each epoch's size (the final size's
    kept for the BatchNorm pass; one other at a time, since sizes only grow). As a callback: each epoch
    trains at its size, and its validation follows a BatchNorm pass where ``reestimates`` says."""

    def __init__(self, training: Training, schedule: SizeSchedule, progress: Progress) -> None:
        self.training, self.schedule = training, schedule
        self.final_loader = training.train_loader  # built at the final size (setup.py)
        self.loader, self.loader_size, self.epoch = self.final_loader, schedule.final, 0
        # The size of the last epoch trained (and of the one before): a size never shrinks, even when a
        # time budget's re-plan would.
        self.size = int(progress.epochs[-1].get("train_size", 0)) if progress.epochs else 0
        self.previous = self.size
        self.batchnorm = has_batchnorm(training.validated)
        self.keep = subset(training.settings, Path(training.settings.data.data_dir), say=False)["train"]
        steps, val_steps = len(training.train_loader), len(training.val_loader) * FORWARD_SHARE
        self.train_share = steps / (steps + val_steps)  # of a full-size epoch's time
        # A training step's time at each size, as a share of one at the final size: measured (measure_steps),
        # else in proportion to the pixels (small sizes are then underestimated: fixed costs stay).
        self.step_share = {size: (size / schedule.final) ** 2 for size in schedule.sizes}

    @classmethod
    def of(cls, training: Training, progress: Progress) -> "Resizing | None":
        schedule = parse_size_schedule(training.settings.data.size_schedule)
        return cls(training, schedule, progress) if schedule is not None and len(schedule.sizes) > 1 else None

    def measure_steps(self, epoch_seconds: float | None) -> dict[int, float]:
        """Time TIMED_STEPS training steps at each smaller size, against the final size's (from
        ``epoch_seconds``, the estimate clock.py timed): the shares a time budget plans with."""
        from .clock import time_one_step

        t = self.training
        final_step = epoch_seconds / (len(t.train_loader) + len(t.val_loader) * FORWARD_SHARE) if epoch_seconds else None
        for size in self.schedule.sizes[:-1]:
            step = time_one_step(t, size) if final_step else None
            if step is not None:
                self.step_share[size] = min(step / final_step, 1.0)
        return self.step_share

    def start(self, epoch: int) -> int:
        """Set the training's train loader for ``epoch``; the size it trains at."""
        size = self.schedule.size_at(epoch, self.training.horizon.epochs, self.size)
        if size != self.loader_size:
            self.loader, self.loader_size = self._loader(size), size
        self.training.train_loader, self.epoch, self.previous, self.size = self.loader, epoch, self.size, size
        return size

    def on_epoch_start(self, loop: Loop) -> None:
        loop.size = self.start(loop.epoch)

    def on_validation_start(self, loop: Loop) -> None:
        if self.reestimates(loop.epoch, self.training.horizon.epochs):
            self.reestimate(loop.epoch)

    def _loader(self, size: int) -> DataLoader:
        if size == self.schedule.final:
            return self.final_loader
        t = self.training
        split = load_part(t.settings, Path(t.settings.data.data_dir), "train", size, self.keep, quiet=True)
        return train_loader(t.settings, split, size, loader_options(t.settings, t.machine.workers, t.device, t.dist), t.dist)

    def reestimates(self, epoch: int, last: int) -> bool:
        """Whether BatchNorm statistics are re-estimated before ``epoch``'s validation: at the first epoch
        at the final size (its running statistics still mostly come from smaller images; from then on
        the epochs at the final size renew them) and at the planned last one (whose weights are kept:
        statistics averaged over the whole split with these weights, rather than a moving average
        over the last steps of changing weights). Twice a run: each costs a third of an epoch."""
        final = self.schedule.final
        return self.batchnorm and self.size == final and (self.previous < final or epoch == last)

    def reestimate(self, epoch: int) -> None:
        """The validated model's BatchNorm statistics, over the train split at the final size."""
        t = self.training
        self.final_loader.sampler.set_epoch(epoch)
        batches = (t.to_device(images, masks)[0] for images, masks in self.final_loader)
        with t.precision.autocast():
            reestimate_batchnorm(t.validated, batches)

    def cost(self, epoch: int, last: int) -> float:
        """Epoch ``epoch``'s time, as a share of a full-size epoch's, when the run ends at ``last``:
        training as its steps measured, validation at the final size (and so is the BatchNorm pass)."""
        size, final = self._size_at(epoch, last), self.schedule.final
        share = self.train_share * self.step_share[size] + (1 - self.train_share)
        if self.batchnorm and size == final and (self._size_at(epoch - 1, last) < final or epoch == last):
            share += self.train_share * FORWARD_SHARE
        return share

    def _size_at(self, epoch: int, last: int) -> int:
        """The size ``epoch`` trained or trains at (planned from ``last`` when it has not started)."""
        if epoch < self.epoch:
            return self.previous
        return self.size if epoch == self.epoch else self.schedule.size_at(epoch, last, self.size)
