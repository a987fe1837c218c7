"""The names of a run directory's files; nothing outside ``petseg_cli.run`` spells them.

    runs/<name>/config.toml    every resolved setting + [run] facts (versions, device, dataset, counts)
    runs/<name>/best.pth       weights with the best validation Dice (+ model name and arguments)
    runs/<name>/last.pth       the last epoch's validated weights, and what a resume needs (checkpoint.py)
    runs/<name>/history.json   one record per epoch, and a summary once training stops
    runs/<name>/eval-<tag>.json, eval-<tag>.csv, samples-<tag>.png   written by `petseg evaluate`, where
                               <tag> = <split>-<weights>-<original|training-size>[-tta][-on-<data set>]
                               (``-on-`` only for a data set other than the run's own: evaluations.py)
    runs/<name>/curves.png     validation Dice and training loss per epoch (`petseg summary --plot`)
    runs/<name>/threshold.json the mask threshold chosen on the val split, and what it was tuned for
    runs/<name>/tensorboard/   TensorBoard's event files (`petseg train --logger tensorboard`)
    runs/<name>/mlflow.json    the MLflow store and run this run logs to (`petseg train --logger mlflow`)
    runs/<name>/.training.lock, .training.json   while a process trains the run: its lock, and who holds it

Every file is written to a temporary name in the same directory and renamed into place (``files``), so a
crash never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError, UsageError
from ..config.settings import WEIGHTS as WEIGHT_CHOICES

CONFIG = "config.toml"
BEST = "best.pth"
LAST = "last.pth"
HISTORY = "history.json"
CURVES = "curves.png"
THRESHOLD = "threshold.json"
TENSORBOARD = "tensorboard"  # --logger tensorboard: the event files' folder
MLFLOW_RUN = "mlflow.json"  # --logger mlflow: {"tracking_uri", "run_id"}, for a resumed run to continue it
LOCK = ".training.lock"  # the OS lock a training process holds (lock.py)
LOCK_HOLDER = ".training.json"  # its PID, host and start, for the process that finds it taken
RUN_SECTION = "run"  # facts about the run in config.toml, beside the settings
WEIGHTS = dict(zip(WEIGHT_CHOICES, (BEST, LAST)))  # --weights -> the file
DEFAULT_WEIGHTS = WEIGHT_CHOICES[0]
AT_ORIGINAL, AT_TRAINING = "original", "training"  # --at: each image's own size, or the run's training size
SCORED_AT = (AT_ORIGINAL, AT_TRAINING)


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / HISTORY).is_file()


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise UsageError(f"--weights must be one of: {', '.join(WEIGHTS)}; got {weights!r}")


def read_mlflow_run(run_dir: Path) -> dict[str, Any]:
    """mlflow.json; OSError or ValueError where it is missing or unreadable."""
    record = json.loads((run_dir / MLFLOW_RUN).read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{MLFLOW_RUN} holds no object")
    return record


def read_json(path: Path) -> Any:
    """The parsed file; FileNotFoundError passes through, anything but JSON is a PetsegError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PetsegError(f"{path} is not valid JSON ({exc})") from None
