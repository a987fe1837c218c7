"""The run-directory convention; the only module that knows the file names inside a run.

    runs/<name>/config.toml    every resolved setting + [run] facts (versions, device, dataset, counts)
    runs/<name>/best.pth       weights with the best validation Dice (+ model name and arguments)
    runs/<name>/last.pth       the last epoch's validated weights, and what a resume needs (checkpoint.py)
    runs/<name>/history.json   one record per epoch, and a summary once training stops
    runs/<name>/eval-<tag>.json, eval-<tag>.csv, samples-<tag>.png   written by `petseg evaluate`, where
                               <tag> = <split>-<weights>-<original|training-size>[-tta]
    runs/<name>/curves.png     validation Dice and training loss per epoch (`petseg summary --plot`)

Every file is written to a temporary name in the same directory and renamed into place (``files``), so a
crash never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PetsegError, UsageError
from .files import write_json_atomic, write_text_atomic
from .settings import Settings, read_toml, settings_from_dict

CONFIG = "config.toml"
BEST = "best.pth"
LAST = "last.pth"
HISTORY = "history.json"
CURVES = "curves.png"
RUN_SECTION = "run"  # facts about the run in config.toml, beside the settings
WEIGHTS = {"best": BEST, "last": LAST}  # --weights choices
DEFAULT_WEIGHTS = "best"
# What `petseg evaluate` writes: one set of files per way of measuring, named by everything that changes
# the figures (split, weights, the size scored at, TTA), e.g. eval-test-best-original.json.
EVALUATION_FILES = {"json": "eval-{tag}.json", "csv": "eval-{tag}.csv", "samples": "samples-{tag}.png"}
AT_ORIGINAL, AT_TRAINING = "original", "training"  # --at: each image's own size, or the run's training size
SCORED_AT = (AT_ORIGINAL, AT_TRAINING)
AT_TAGS = {AT_ORIGINAL: "original", AT_TRAINING: "training-size"}


def evaluation_tag(split: str, weights: str = DEFAULT_WEIGHTS, at: str = AT_ORIGINAL, tta: bool = False) -> str:
    """``test-best-original``, ``val-last-training-size-tta`` …: what an evaluation measured."""
    return f"{split}-{weights}-{AT_TAGS[at]}" + ("-tta" if tta else "")


def evaluation_file(
    run_dir: Path, kind: str, split: str, weights: str = DEFAULT_WEIGHTS, at: str = AT_ORIGINAL, tta: bool = False
) -> Path:
    """The ``kind`` (json, csv or samples) file of one evaluation of ``run_dir``."""
    return run_dir / EVALUATION_FILES[kind].format(tag=evaluation_tag(split, weights, at, tta))


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / HISTORY).is_file()


def list_runs(runs_dir: Path) -> list[Path]:
    """Every run directory directly under ``runs_dir``; a clear error when there is none."""
    found = sorted(p for p in runs_dir.iterdir() if is_run(p)) if runs_dir.is_dir() else []
    if not found:
        raise UsageError(f"no runs under {runs_dir.resolve()}: pass run directories, or train one with `petseg train`")
    return found


def default_run_name(model: str, batch_size: int, cbam: bool = True) -> str:
    from .models import MODELS

    suffix = "-no-cbam" if MODELS[model].uses_cbam and not cbam else ""
    return f"{model}{suffix}-bs{batch_size}"


def check_new_run_name(runs_dir: Path, name: str) -> None:
    if (runs_dir / name).exists():
        raise PetsegError(
            f"run {runs_dir / name} already exists; choose another --name, "
            f"or continue it with --resume {runs_dir / name}",
            exit_code=2,
        )


def create_run_dir(runs_dir: Path, base_name: str, explicit: bool) -> Path:
    """Make a new run directory; never reuse one. ``base_name``, then ``-2``, ``-3`` … unless explicit."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    candidate, n = base_name, 1
    while True:
        try:
            (runs_dir / candidate).mkdir()
            return runs_dir / candidate
        except FileExistsError:
            if explicit:
                check_new_run_name(runs_dir, candidate)
            n += 1
            candidate = f"{base_name}-{n}"


def discard_new_run_dir(run_dir: Path, remove_parent: bool = False) -> None:
    """Remove a run directory made by ``create_run_dir`` before anything was written into it (and its
    parent ``runs_dir`` when that was made for it too and is empty now)."""
    for path in [run_dir, run_dir.parent] if remove_parent else [run_dir]:
        try:
            path.rmdir()
        except OSError:  # not empty (something else is there): leave it
            return


def write_config(run_dir: Path, settings: Settings, facts: dict[str, Any]) -> None:
    import tomli_w

    table = settings.to_dict()
    table[RUN_SECTION] = facts
    write_text_atomic(run_dir / CONFIG, tomli_w.dumps(table))


def read_config(run_dir: Path) -> tuple[Settings, dict[str, Any]]:
    """The run's settings and its [run] facts; a clear error when it is no run."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a petseg run (no {CONFIG})")
    table = read_toml(path)
    return settings_from_dict(table, str(path)), dict(table.get(RUN_SECTION, {}))


def _read_json(path: Path) -> Any:
    """The parsed file; FileNotFoundError passes through, anything but JSON is a PetsegError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PetsegError(f"{path} is not valid JSON ({exc})") from None


def read_history(run_dir: Path) -> dict[str, Any]:
    path = run_dir / HISTORY
    try:
        history = _read_json(path)
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a petseg run (no {HISTORY})") from None
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise PetsegError(f"{path} does not hold a petseg history (no 'epochs' list)")
    return history


def read_evaluation(
    run_dir: Path, split: str = "test", weights: str = DEFAULT_WEIGHTS, at: str = AT_ORIGINAL, tta: bool = False
) -> dict[str, Any] | None:
    """The run's scores measured that way, or None when it has not been evaluated so."""
    path = evaluation_file(run_dir, "json", split, weights, at, tta)
    try:
        scores = _read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(scores, dict):
        raise PetsegError(f"{path} does not hold petseg scores (not a JSON object)")
    return scores


def weights_bytes(run_dir: Path) -> int | None:
    """The size of the run's best.pth, or None before its first finished epoch."""
    path = run_dir / BEST
    return path.stat().st_size if path.is_file() else None


def write_history(run_dir: Path, epochs: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    write_json_atomic(run_dir / HISTORY, {"epochs": epochs, "summary": summary})


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise UsageError(f"--weights must be one of: {', '.join(WEIGHTS)}; got {weights!r}")


def describe_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """Which tensors differ between a model's state dict and a checkpoint's, with one example each."""
    shape = lambda tensors, key: tuple(getattr(tensors[key], "shape", ()))  # noqa: E731
    mismatched = [k for k in expected if k in given and shape(expected, k) != shape(given, k)]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} size mismatch(es), e.g. {k}: {shape(given, k)} saved, {shape(expected, k)} expected")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts) or "the tensors do not load"


def load_run_model(run_dir: Path, weights: str = DEFAULT_WEIGHTS) -> tuple[Any, Settings, dict[str, Any]]:
    """Rebuild a run's model from its config.toml and load ``best.pth`` or ``last.pth`` into it.

    The model is built on the meta device (no memory, no random initialisation) and takes the loaded
    tensors as they are: this saves a second or so per start of ``infer`` and ``evaluate``.
    """
    import torch

    from .checkpoint import load_checkpoint
    from .models import build_model

    check_weights(weights)
    settings, facts = read_config(run_dir)
    path = run_dir / WEIGHTS[weights]
    checkpoint = load_checkpoint(path)
    try:
        with torch.device("meta"):
            model = build_model(settings.model.name, cbam=settings.model.cbam)
    except ValueError as exc:
        raise PetsegError(f"{run_dir / CONFIG}: {exc}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"], assign=True)
    except RuntimeError:
        raise PetsegError(
            f"{path} does not fit the {settings.model.name} model that {CONFIG} names "
            f"(the weights were saved for {checkpoint.get('model', 'another model')}): "
            + describe_mismatch(model.state_dict(), checkpoint["state_dict"])
        ) from None
    return model, settings, checkpoint
