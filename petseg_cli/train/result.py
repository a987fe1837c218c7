"""How a training ends: its stop reasons, the exceptions that end an epoch early, and the record
``train`` returns (cli.py renders it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMPLETED, EARLY_STOP, INTERRUPTED, DIVERGED = "completed", "early_stop", "interrupted", "diverged"
TIME_UP = "time_up"  # a --time budget left no time for another epoch
EXIT_INTERRUPTED = 130
ALREADY_FINISHED = "already_finished"  # --resume-if-exists found the run finished: nothing trained


class Interrupted(Exception):
    pass


class Diverged(Exception):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    stop_reason: str
    best_epoch: int  # 0: no epoch finished
    best_val_dice: float
    saved_epoch: int = 0  # the last epoch whose files the run keeps (0: none)
    optimizer_kept: bool = True  # False: last.pth holds no optimiser state, the run cannot be resumed
    weights: str = "raw"  # what best.pth and last.pth hold: "ema" (the averaged weights) or "raw"
    note: str = ""  # for ALREADY_FINISHED: why nothing trained

    @property
    def exit_code(self) -> int:
        return {INTERRUPTED: EXIT_INTERRUPTED, DIVERGED: 1}.get(self.stop_reason, 0)
