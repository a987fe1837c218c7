"""history.json: one record per finished epoch, and a summary once training stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.errors import PetsegError, UsageError
from ..base.files import write_json_atomic
from .layout import HISTORY, read_json

# What every epoch record holds; a record without one of them (a hand-edited or foreign file) is left out.
EPOCH_KEYS = ("epoch", "train_loss", "val_dice", "seconds", "images_per_s")


def _complete(record: Any) -> bool:
    return isinstance(record, dict) and all(isinstance(record.get(k), (int, float)) for k in EPOCH_KEYS)


def read_history(run_dir: Path) -> dict[str, Any]:
    """history.json: ``epochs`` (the complete records, in order), ``summary`` (a dict, or None while the
    run has not stopped) and ``partial`` (how many records were left out for lacking a figure: the caller
    may warn). A file that is no history is a PetsegError."""
    path = run_dir / HISTORY
    try:
        history = read_json(path)
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a petseg run (no {HISTORY})") from None
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise PetsegError(f"{path} does not hold a petseg history (no 'epochs' list)")
    epochs = [e for e in history["epochs"] if _complete(e)]
    summary = history.get("summary") if isinstance(history.get("summary"), dict) else None
    return {**history, "epochs": epochs, "summary": summary, "partial": len(history["epochs"]) - len(epochs)}


def write_history(run_dir: Path, epochs: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    write_json_atomic(run_dir / HISTORY, {"epochs": epochs, "summary": summary})


def best_epoch(history: dict[str, Any]) -> tuple[int | None, float | None]:
    """(epoch, val Dice) of the best finished epoch: the summary's once the run stopped, else the first of
    the highest among the epochs so far (as training keeps it); (None, None) before any."""
    summary = history.get("summary") or {}
    if summary.get("best_epoch") and isinstance(summary.get("best_val_dice"), (int, float)):
        return int(summary["best_epoch"]), float(summary["best_val_dice"])
    if not history["epochs"]:
        return None, None
    best = max(history["epochs"], key=lambda e: e["val_dice"])
    return int(best["epoch"]), float(best["val_dice"])
