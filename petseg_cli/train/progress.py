"""What the epochs so far add up to: their records (history.json's), the best epoch and early stopping;
and the callbacks that say so: each epoch's line, and early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..base.console import info, out, print_fitted, warn
from ..run import BEST
from .callbacks import Callback, Loop
from .result import DIVERGED, EARLY_STOP

if TYPE_CHECKING:
    from .clock import RunClock


@dataclass
class Progress:
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = -1.0
    bad_epochs: int = 0  # epochs since the best

    def record(self, epoch: dict[str, Any]) -> bool:
        """Add a finished epoch's record; whether its val_dice is the best so far."""
        self.epochs.append(epoch)
        improved = epoch["val_dice"] > self.best_val_dice
        if improved:
            self.best_epoch, self.best_val_dice, self.bad_epochs = epoch["epoch"], epoch["val_dice"], 0
        else:
            self.bad_epochs += 1
        return improved

    def stops_early(self, patience: int) -> bool:
        """Whether early stopping after ``patience`` epochs without a better val Dice ends the run (0: off)."""
        return patience > 0 and self.bad_epochs >= patience

    def rewind(self, to: "Progress") -> None:
        """Back to ``to`` (a copy taken before the last ``record``)."""
        self.epochs, self.best_epoch, self.best_val_dice, self.bad_epochs = to.epochs, to.best_epoch, to.best_val_dice, to.bad_epochs

    def early_stopping(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_val_dice": self.best_val_dice, "bad_epochs": self.bad_epochs}

    @classmethod
    def restored(cls, epochs: list[dict[str, Any]], early_stopping: dict[str, Any]) -> "Progress":
        return cls(list(epochs), early_stopping["best_epoch"], early_stopping["best_val_dice"], early_stopping["bad_epochs"])

    def summary(self, stop_reason: str, optimizer_kept: bool, weights: str, parameters: int) -> dict[str, Any]:
        """history.json's summary once training stops."""
        return {
            "optimizer_kept": optimizer_kept,
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_val_dice if self.best_epoch else None,
            "total_seconds": round(sum(e["seconds"] for e in self.epochs), 3),
            "stop_reason": stop_reason,
            "epochs_run": len(self.epochs),
            "parameters": parameters,
            "weights": weights,
        }


class EpochLines(Callback):
    """Each epoch's line (and its warning when the model is degenerate), and the line a diverged run
    ends with; ``sized``: the run has a size schedule, whose epochs say their training size."""

    def __init__(self, clock: RunClock, sized: bool = False) -> None:
        self.clock, self.sized = clock, sized

    def on_epoch_end(self, loop: Loop) -> None:
        print_epoch(loop.record, loop.training.horizon.epochs, self.clock, loop.improved, self.sized)  # the planned last epoch
        if loop.degenerate:
            warn(f"epoch {loop.epoch}: {loop.degenerate}")

    def on_train_end(self, loop: Loop) -> None:
        if loop.stop_reason == DIVERGED:
            warn(f"{loop.fault}: training diverged; the best weights so far are kept in {loop.training.run_dir / BEST}")


def print_epoch(record: dict[str, Any], epochs: int, clock: RunClock, improved: bool, sized: bool = False) -> None:
    """The epoch's line (with its training size when ``sized``: a size schedule's), fitted to a terminal."""
    epoch = record["epoch"]
    print_fitted(
        out,
        f"epoch {epoch:>3}/{epochs}" + (f"  {record['train_size']}px" if sized else "")
        + f"  train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
        f"val_dice {record['val_dice']:.4f}  lr {record['lr']:.2e}  {record['seconds']:.1f} s"
        + (f"  (run: {clock.left()} left)" if epoch < epochs else "")
        + ("  * best" if improved else ""),
    )


class EarlyStopping(Callback):
    """The run stops after ``patience`` epochs without a better val Dice (0: never)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, loop: Loop) -> None:
        if loop.progress.stops_early(self.patience):
            info(f"early stop: validation Dice has not improved for {self.patience} epochs")
            loop.stop_run(EARLY_STOP)
