"""A training's checkpoints: best.pth and last.pth written (in checkpoint.py's format) and last.pth
restored."""

from __future__ import annotations

from typing import Any

import torch

from ..run import BEST, LAST, write_history
from ..run.checkpoint import TrainingState, last_record, load_checkpoint, save_checkpoint, training_state, weights_record
from ..base.errors import PetsegError
from .callbacks import Callback, Loop
from .progress import Progress
from .result import INTERRUPTED, Interrupted
from .resume import optimizer_dropped_message
from .setup import Training, model_args
from .signals import StopSignals


def validated_weights(training: Training) -> dict[str, Any]:
    """The weights validation scored (the EMA's when there is one), with what rebuilds their model."""
    s = training.settings
    return weights_record(s.model.name, model_args(s), s.data.image_size, training.validated.state_dict(), training.weights)


def save_best(training: Training, epoch: int, val_dice: float) -> None:
    save_checkpoint(training.run_dir / BEST, {**validated_weights(training), "epoch": epoch, "val_dice": val_dice})


def save_last(training: Training, progress: Progress, epoch: int, optimizer_state: bool = True) -> None:
    """last.pth: the validated weights and, unless ``optimizer_state`` is False (a finished run that
    need not be resumed), everything a resume needs."""
    state = TrainingState(
        epoch=epoch,
        raw=training.model.state_dict(),
        ema=None,  # the validated weights, saved as state_dict
        ema_updates=training.ema.updates if training.ema is not None else 0,
        optimizer=training.optimizer.state_dict() if optimizer_state else None,
        scheduler=training.scheduler.state_dict() if optimizer_state else None,
        scaler=training.scaler.state_dict() if optimizer_state else None,
        early_stopping=progress.early_stopping(),
        rng={"torch": torch.get_rng_state()},
        history=progress.epochs,  # resume takes the records from here: they match the weights
    )
    save_checkpoint(training.run_dir / LAST, last_record(validated_weights(training), state))


def last_of_a_finished_run(training: Training, epoch: int) -> bool:
    """Whether ``epoch`` ends the run for certain (the configured last epoch) and its last.pth need not
    keep the optimiser (no ``--keep-optimizer``): that file is then written once, weights only, rather
    than whole and again without the optimiser when the run finishes."""
    return epoch >= training.settings.train.epochs and not training.settings.train.keep_optimizer


class SaveEpoch(Callback):
    """Every epoch saved whole (best.pth when it is the best, last.pth and history.json), in the first
    process; a signal waits for the files (``signals``), and one that came before they were begun stops
    the run with the epoch before."""

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals

    def on_save(self, loop: Loop) -> None:
        training, epoch = loop.training, loop.epoch
        try:
            with self.signals.saving(epoch):  # a second Ctrl-C waits for these files to be whole
                if training.dist.is_main:
                    if loop.improved:
                        save_best(training, epoch, loop.record["val_dice"])
                    save_last(training, loop.progress, epoch, optimizer_state=not last_of_a_finished_run(training, epoch))
                    write_history(training.run_dir, loop.progress.epochs, None)
        except Interrupted:  # stopped before this epoch's files were begun: the run keeps the one before
            loop.unrecord()
            loop.stop_run(INTERRUPTED)


def restore(training: Training) -> tuple[int, Progress]:
    """Load last.pth into ``training``; the last finished epoch and the progress up to it."""
    state = training_state(load_checkpoint(training.run_dir / LAST))
    if state.optimizer is None:
        raise PetsegError(optimizer_dropped_message(training.run_dir), exit_code=2)
    training.model.load_state_dict(state.raw)
    training.optimizer.load_state_dict(state.optimizer)
    training.scheduler.load_state_dict(state.scheduler)
    if training.ema is not None:  # (a file without an average: start it from the restored weights)
        training.ema.load(state.ema if state.ema is not None else state.raw, state.ema_updates)
    if state.scaler:
        training.scaler.load_state_dict(state.scaler)
    torch.set_rng_state(state.rng["torch"])
    return state.epoch, Progress.restored(state.history, state.early_stopping)
