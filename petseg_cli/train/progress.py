"""What the epochs so far add up to: their records (history.json's), the best epoch and early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
