"""What a run directory says about its training, finished or still going: the figures that
``petseg compare`` lines up and ``petseg summary`` shows for a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError
from ..models import model_label
from . import AT_ORIGINAL, AT_TRAINING, CONFIG, DEFAULT_WEIGHTS, Measure, Run
from ..config.settings import Settings

UNFINISHED = "unfinished"  # the stop reason shown while history.json has no summary yet
TEST_SPLIT = "test"
TEST_DICE_KEY = "dice"  # the mean per-image Dice in eval-test-*.json


@dataclass(frozen=True)
class RunStats:
    run_dir: Path
    settings: Settings
    facts: dict[str, Any]
    epochs: list[dict[str, Any]]
    model: str  # model_label: the model, with no-cbam marked
    stop_reason: str
    best_epoch: int | None
    best_val_dice: float | None
    total_seconds: float
    parameters: int | None
    test_dice: float | None  # best.pth, each image at its original size, no TTA
    weights_bytes: int | None
    test_dice_training_size: float | None = None  # best.pth, scored at the run's training size
    test_dice_tta: float | None = None  # best.pth, original size, with the flip TTA
    partial_epochs: int = 0  # epoch records of history.json left out for lacking a figure
    worst_breed: tuple[str, float] | None = None  # the breed with the lowest test Dice (evaluate --by breed)
    test_data: str | None = None  # the data set the test figures are on: the run's own, or the one --data names

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def seconds_per_epoch(self) -> float | None:
        return self.total_seconds / len(self.epochs) if self.epochs else None

    @property
    def images_per_s(self) -> float | None:
        return sum(e["images_per_s"] for e in self.epochs) / len(self.epochs) if self.epochs else None

    def series(self, key: str) -> list[float]:
        """One figure of every finished epoch (``val_dice``, ``train_loss`` …), in order."""
        return [e[key] for e in self.epochs]


def _test_dice(run: Run, data: str | None, at: str = AT_ORIGINAL, tta: bool = False) -> float | None:
    """The mean Dice of the run's best weights on the test split of ``data`` (None: the run's own data
    set), scored ``at`` that size, with ``tta``."""
    scores = run.evaluation(Measure(TEST_SPLIT, DEFAULT_WEIGHTS, at, tta, data)) or {}
    dice = scores.get(TEST_DICE_KEY)
    return float(dice) if isinstance(dice, (int, float)) and not isinstance(dice, bool) else None


def _worst_group(run: Run, data: str | None, by: str) -> tuple[str, float] | None:
    """The group with the lowest mean Dice in the run's test evaluation by ``by``, when there is one."""
    import csv

    path = Measure(TEST_SPLIT, data=data).file(run.path, "groups", by=by)
    try:
        with open(path, newline="") as f:
            rows = [(row[by], float(row["dice"])) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return None
    return min(rows, key=lambda row: row[1]) if rows else None


def load_run_stats(run_dir: Path, data: str | None = None) -> RunStats:
    """Read a run's config.toml, history.json, test evaluations and best.pth size; PetsegError if unusable.
    The test figures are on the run's own data set, or on the one ``data`` names (``compare --data``)."""
    run = Run.open(run_dir)
    settings, facts, history = run.settings, run.facts, run.history
    epochs = history["epochs"]
    try:
        model = model_label(settings.model.name, settings.model.cbam)
    except ValueError as exc:
        raise PetsegError(f"{run_dir / CONFIG}: {exc}") from None
    summary = history["summary"] or {}
    best_epoch, best_val_dice = run.best_epoch
    key = run.find_data(data)
    stop_reason = summary.get("stop_reason", UNFINISHED)
    total_seconds = summary.get("total_seconds", sum(e["seconds"] for e in epochs))
    return RunStats(
        run_dir=run_dir,
        settings=settings,
        facts=facts,
        epochs=epochs,
        model=model,
        stop_reason=stop_reason,
        best_epoch=best_epoch,
        best_val_dice=best_val_dice,
        total_seconds=total_seconds,
        parameters=facts.get("parameters") or summary.get("parameters"),
        partial_epochs=history["partial"],
        worst_breed=_worst_group(run, key, "breed"),
        test_dice=_test_dice(run, key),
        weights_bytes=run.weights_bytes,
        test_dice_training_size=_test_dice(run, key, at=AT_TRAINING),
        test_dice_tta=_test_dice(run, key, tta=True),
        test_data=key or run.dataset_dir.name,
    )
