"""``Run``: one run directory, opened once. Its config.toml, facts and history are read when it is opened;
every file in it is read and written through it (the names are in ``layout``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError, UsageError
from ..base.files import write_text_atomic
from ..config.settings import Settings, read_toml, settings_from_dict
from . import evaluations, history, layout, thresholds
from .evaluations import DataSet, Measure
from .model import load_model
from .thresholds import ThresholdChoice


def read_config(run_dir: Path) -> tuple[Settings, dict[str, Any]]:
    """The run's settings and its [run] facts; a clear error when it is no run."""
    path = run_dir / layout.CONFIG
    if not run_dir.exists():
        raise UsageError(f"{run_dir} does not exist: pass a run directory (runs/NAME)")
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a petseg run (no {layout.CONFIG})")
    table = read_toml(path)
    return settings_from_dict(table, str(path)), dict(table.get(layout.RUN_SECTION, {}))


def write_config(run_dir: Path, settings: Settings, facts: dict[str, Any]) -> None:
    """config.toml: the settings, and the [run] facts that have a value (TOML has no None: a fact
    without one is left out)."""
    import tomli_w

    table = settings.to_dict()
    table[layout.RUN_SECTION] = {key: value for key, value in facts.items() if value is not None}
    write_text_atomic(run_dir / layout.CONFIG, tomli_w.dumps(table))


class Run:
    """A run directory: ``Run.open(path)`` reads config.toml and history.json once; the rest is read
    when asked for. A history that cannot be read fails only what needs it (``history``)."""

    def __init__(self, path: Path, settings: Settings, facts: dict[str, Any]) -> None:
        self.path = Path(path)
        self.settings = settings
        self.facts = facts
        self._history: dict[str, Any] | None = None
        self._history_error: PetsegError | None = None

    @classmethod
    def open(cls, path: Path) -> "Run":
        """The run at ``path``; a UsageError when it is no run, a PetsegError when its config is broken."""
        run = cls(Path(path), *read_config(Path(path)))
        run.reload_history()
        return run

    @classmethod
    def create(cls, path: Path, settings: Settings, facts: dict[str, Any]) -> "Run":
        """A new run's first files in ``path`` (made by ``names.create_run_dir``): config.toml, an empty history."""
        run = cls(Path(path), settings, facts)
        run.write_config(settings, facts)
        run.write_history([], None)
        return run

    @property
    def name(self) -> str:
        return self.path.resolve().name

    # -- config.toml and history.json -------------------------------------------------------------

    def write_config(self, settings: Settings, facts: dict[str, Any]) -> None:
        write_config(self.path, settings, facts)
        self.settings, self.facts = settings, facts

    def reload_history(self) -> None:
        try:
            self._history, self._history_error = history.read_history(self.path), None
        except PetsegError as exc:
            self._history, self._history_error = None, exc

    @property
    def history(self) -> dict[str, Any]:
        """history.json as ``history.read_history`` gives it; its error when it could not be read."""
        if self._history is None:
            raise self._history_error or UsageError(f"{self.path} has no history")
        return self._history

    def write_history(self, epochs: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
        history.write_history(self.path, epochs, summary)
        self._history = {"epochs": epochs, "summary": summary, "partial": 0}

    @property
    def best_epoch(self) -> tuple[int | None, float | None]:
        return history.best_epoch(self.history)

    @property
    def best_val_dice(self) -> float | None:
        """The run's best validation Dice; None when it has none (or its history cannot be read)."""
        try:
            return self.best_epoch[1]
        except PetsegError:
            return None

    # -- the data and the weights -----------------------------------------------------------------

    @property
    def dataset_dir(self) -> Path:
        """The dataset the run was trained on: [run] dataset_path, else [data] data_dir (the first that exists)."""
        candidates = [Path(p) for p in (self.facts.get("dataset_path"), self.settings.data.data_dir) if p]
        return next((p for p in candidates if p.is_dir()), candidates[-1])

    @cached_property
    def data_set(self) -> DataSet:
        return DataSet.of(self.dataset_dir)

    def is_own_data(self, data: DataSet) -> bool:
        """Whether ``data`` is the data set the run trained on: its directory, or one of the same name with
        the same split lists (the same data kept elsewhere)."""
        return data.directory == self.dataset_dir.resolve() or data.key == self.data_set.key

    def weights_file(self, weights: str = layout.DEFAULT_WEIGHTS) -> Path:
        layout.check_weights(weights)
        return self.path / layout.WEIGHTS[weights]

    def check_weights(self, weights: str = layout.DEFAULT_WEIGHTS) -> Path:
        """The weights file; a PetsegError saying why it is missing and what works now when it is."""
        path = self.weights_file(weights)
        if not path.is_file():
            raise self.missing_weights(weights)
        return path

    def missing_weights(self, weights: str) -> PetsegError:
        """The run has no ``weights`` file: why, and a command that works now. A run that can still train
        (running, or interrupted) writes it when an epoch finishes; a finished one never will: its other
        weights, or a new run."""
        path = self.weights_file(weights)
        summary = self._history["summary"] if self._history is not None else None
        if summary is None or summary.get("stop_reason") == "interrupted":
            return PetsegError(
                f"{path} does not exist: it is written when an epoch of the run finishes "
                f"(to train the run: petseg train --resume {self.path})"
            )
        others = [other for other, name in layout.WEIGHTS.items() if other != weights and (self.path / name).is_file()]
        if others:
            return PetsegError(f"{path} does not exist, and the run has finished; its {layout.WEIGHTS[others[0]]} is there: --weights {others[0]}")
        return PetsegError(f"{path} does not exist, and the run has finished without weights: train a new run (petseg train)")

    @property
    def weights_bytes(self) -> int | None:
        """The size of the run's best.pth, or None before its first finished epoch."""
        path = self.path / layout.BEST
        return path.stat().st_size if path.is_file() else None

    def load_model(self, weights: str = layout.DEFAULT_WEIGHTS) -> tuple[Any, dict[str, Any]]:
        """The run's model with ``best.pth`` or ``last.pth`` loaded (on the CPU): (model, checkpoint)."""
        return load_model(self.path, self.settings, self.check_weights(weights))

    # -- evaluations and thresholds ---------------------------------------------------------------

    def measure(
        self, split: str, weights: str, at: str, tta: bool, data: DataSet | None = None, model: str | None = None,
        scales: tuple[float, ...] = (),
    ) -> Measure:
        """How an evaluation on ``data`` (None: the run's own) by ``model`` (None: the run's own; else an
        exported file's stem, runtime and precision), at ``scales`` (multi-scale TTA), is named."""
        other = data is not None and not self.is_own_data(data)
        return Measure(split, weights, at, tta, data.key if other else None, model, scales)

    def evaluation(self, measure: Measure) -> dict[str, Any] | None:
        return evaluations.read_evaluation(self.path, measure)

    def find_data(self, name: str | None) -> str | None:
        """``Measure.data`` for ``--data NAME`` (None: the run's own data set)."""
        try:
            own = self.data_set if name is not None else None
        except OSError:
            own = None
        return evaluations.find_data(self.path, own, name)

    def write_threshold(self, record: dict[str, Any]) -> Path:
        return thresholds.write_threshold(self.path, record)

    def threshold_for(self, weights: str, tta: bool) -> ThresholdChoice:
        return thresholds.choose_threshold(self.path, weights, tta)
