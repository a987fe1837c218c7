"""Experiment trackers (``--logger``): each logger is one small module that opens on a run directory
and takes the epochs' records; ``Trackers`` holds the ones a training asked for behind one interface
(``log_epoch``, ``close``), so that the training loop knows none of them.

The registry validates its own names (``check_loggers``) and says which extra a missing package comes
from (``check_installed``), before any training. A logger that fails mid-run is dropped with one
warning: a tracker never costs a training."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ...base.console import warn
from ...base.errors import UsageError

# The numbers of an epoch's record that every logger logs, with the epoch as the step.
SCALARS = ("train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s")


# An epoch's sample images, made only if a tracker asks: () -> (N, H, W, 3) uint8 overlays.
Samples = Callable[[], Any]


class Tracker(Protocol):
    def log_epoch(self, record: dict[str, Any], samples: Samples | None) -> None: ...

    def close(self, stop_reason: str) -> None: ...


@dataclass(frozen=True)
class Logger:
    module: str  # the module in this package whose ``open_tracker(run_dir, start_epoch)`` opens it
    packages: tuple[str, ...]  # what it imports, installed by petseg's extra of the logger's name


LOGGERS = {
    "tensorboard": Logger("tensorboard_tracker", ("tensorboard",)),
    # MLflow's client, and what its SQLite store (petseg's default) needs: SQLAlchemy, and Alembic for the schema.
    "mlflow": Logger("mlflow_tracker", ("mlflow", "sqlalchemy", "alembic")),
}

# What the mlflow logger keeps in the runs directory beside the runs, when MLFLOW_TRACKING_URI names no
# store: the SQLite store, the artifacts, and the file store petseg used before (which earlier runs keep).
MLFLOW_STORE, MLFLOW_ARTIFACTS, MLFLOW_FILE_STORE = "mlflow.db", "mlartifacts", "mlruns"
BESIDE_THE_RUNS = frozenset({MLFLOW_STORE, MLFLOW_ARTIFACTS, MLFLOW_FILE_STORE})


def check_loggers(names: list[str]) -> list[str]:
    """``names`` (train.loggers, --logger) if each is a logger, once; else a UsageError naming the choices."""
    for name in names:
        if name not in LOGGERS:
            raise UsageError(f"--logger must be one of {', '.join(LOGGERS)}, got {name!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"--logger names a logger more than once: {', '.join(names)}")
    return names


def check_installed(names: list[str]) -> None:
    """A UsageError naming the extra to install for the first logger whose package is missing."""
    for name in check_loggers(names):
        for package in LOGGERS[name].packages:
            try:
                importlib.import_module(package)
            except ImportError:
                raise UsageError(f'--logger {name} needs the {package} package: pip install "petseg[{name}]"') from None


class Trackers:
    """The opened loggers; each call goes to every one, and a logger that raises is dropped, saying why."""

    def __init__(self, opened: dict[str, Tracker]) -> None:
        self.opened = opened

    def log_epoch(self, record: dict[str, Any], samples: Samples | None = None) -> None:
        self._each("log_epoch", record, samples)

    def close(self, stop_reason: str) -> None:
        self._each("close", stop_reason)
        self.opened = {}

    def _each(self, method: str, *arguments: Any) -> None:
        for name, tracker in list(self.opened.items()):
            try:
                getattr(tracker, method)(*arguments)
            except Exception as exc:  # a tracker's store or server failing must not end the training
                warn(f"--logger {name} failed ({type(exc).__name__}: {exc}); training goes on without it")
                del self.opened[name]


def open_trackers(names: list[str], run_dir: Path, start_epoch: int) -> Trackers:
    """The loggers ``names`` opened on ``run_dir``, continuing after epoch ``start_epoch`` (0: a new run)."""
    opened: dict[str, Tracker] = {}
    for name in check_loggers(names):
        module = importlib.import_module(f".{LOGGERS[name].module}", __package__)
        try:
            opened[name] = module.open_tracker(run_dir, start_epoch)
        except Exception as exc:
            warn(f"--logger {name} could not start ({type(exc).__name__}: {exc}); training goes on without it")
    return Trackers(opened)
