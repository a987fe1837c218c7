"""Training: the recipe's optimiser, loss and schedule, early stopping on validation Dice, an optional
EMA of the weights (its decay warming up), atomic checkpoints every epoch, clean stop on interrupt,
exact resume; in one process or several (torchrun), in the precision and memory format the machine
computes fastest.

To follow one training step, read loop.py top to bottom (train_step, train_epoch, validate, one_epoch,
run_epoch, run_epochs); everything else a training does is a callback that the loop calls at fixed points
(callbacks.py lists them; command.py lists the callbacks: ema, clock, sizes, saving, samples, bar,
progress). setup.py builds what the loop uses, command.py drives a whole run, resume.py holds the rules
for resuming and saving.py the checkpoints (in checkpoint.py's format)."""

from .command import train
from .resume import RESUMABLE_SETTINGS, check_resumable, check_resume_overrides, train_settings
from .result import COMPLETED, DIVERGED, EARLY_STOP, EXIT_INTERRUPTED, INTERRUPTED, TrainResult
from .signals import StopSignals, announce

__all__ = [
    "COMPLETED", "DIVERGED", "EARLY_STOP", "EXIT_INTERRUPTED", "INTERRUPTED", "RESUMABLE_SETTINGS", "StopSignals",
    "TrainResult", "announce", "check_resumable", "check_resume_overrides", "train", "train_settings",
]
