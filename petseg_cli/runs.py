"""The run-directory convention; the only module that knows the file names inside a run.

    runs/<name>/config.toml    every resolved setting + [run] facts (versions, device, dataset, counts)
    runs/<name>/best.pth       weights with the best validation Dice (+ model name and arguments)
    runs/<name>/last.pth       the last epoch's validated weights, and what a resume needs (checkpoint.py)
    runs/<name>/history.json   one record per epoch, and a summary once training stops
    runs/<name>/eval-<tag>.json, eval-<tag>.csv, samples-<tag>.png   written by `petseg evaluate`, where
                               <tag> = <split>-<weights>-<original|training-size>[-tta]
    runs/<name>/curves.png     validation Dice and training loss per epoch (`petseg summary --plot`)
    runs/<name>/threshold.json the mask threshold chosen on the val split (`petseg evaluate --thresholds`)
    runs/<name>/tensorboard/   TensorBoard's event files (`petseg train --logger tensorboard`)
    runs/<name>/mlflow.json    the MLflow store and run this run logs to (`petseg train --logger mlflow`)

Every file is written to a temporary name in the same directory and renamed into place (``files``), so a
crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import PetsegError, UsageError
from .files import write_json_atomic, write_text_atomic
from .settings import WEIGHTS as WEIGHT_CHOICES
from .settings import Settings, read_toml, settings_from_dict

CONFIG = "config.toml"
BEST = "best.pth"
LAST = "last.pth"
HISTORY = "history.json"
CURVES = "curves.png"
THRESHOLD = "threshold.json"  # the mask threshold chosen on the val split (`petseg evaluate --thresholds`)
TENSORBOARD = "tensorboard"  # --logger tensorboard: the event files' folder
MLFLOW_RUN = "mlflow.json"  # --logger mlflow: {"tracking_uri", "run_id"}, for a resumed run to continue it
RUN_SECTION = "run"  # facts about the run in config.toml, beside the settings
WEIGHTS = dict(zip(WEIGHT_CHOICES, (BEST, LAST)))  # --weights -> the file
DEFAULT_WEIGHTS = WEIGHT_CHOICES[0]
# What `petseg evaluate` writes: one set of files per way of measuring, named by everything that changes
# the figures (split, weights, the size scored at, TTA), e.g. eval-test-best-original.json.
EVALUATION_FILES = {
    "json": "eval-{tag}.json", "csv": "eval-{tag}.csv", "samples": "samples-{tag}.png",
    "groups": "eval-{tag}-by-{by}.csv", "reliability": "reliability-{tag}.png",
}
EVALUATION_JSON_GLOB = "eval-*.json"
AT_ORIGINAL, AT_TRAINING = "original", "training"  # --at: each image's own size, or the run's training size
SCORED_AT = (AT_ORIGINAL, AT_TRAINING)
AT_TAGS = {AT_ORIGINAL: "original", AT_TRAINING: "training-size"}


def evaluation_tag(split: str, weights: str = DEFAULT_WEIGHTS, at: str = AT_ORIGINAL, tta: bool = False) -> str:
    """``test-best-original``, ``val-last-training-size-tta`` …: what an evaluation measured."""
    return f"{split}-{weights}-{AT_TAGS[at]}" + ("-tta" if tta else "")


def evaluation_file(
    run_dir: Path, kind: str, split: str, weights: str = DEFAULT_WEIGHTS, at: str = AT_ORIGINAL, tta: bool = False,
    by: str = "",
) -> Path:
    """The ``kind`` (json, csv, samples, groups ``by`` breed or species, reliability) file of one
    evaluation of ``run_dir``."""
    return run_dir / EVALUATION_FILES[kind].format(tag=evaluation_tag(split, weights, at, tta), by=by)


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


def check_run_name(name: str) -> None:
    """A run name is one path component: not empty, no separator, not ``.``/``..``, no leading dot."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if not name or name.startswith(".") or any(s in name for s in separators) or "\0" in name:
        raise PetsegError(
            f"--name must be one directory name (no '/', no leading '.', not empty), got {name!r}", exit_code=2
        )


def check_new_run_name(runs_dir: Path, name: str) -> None:
    check_run_name(name)
    if (runs_dir / name).exists():
        raise PetsegError(
            f"run {runs_dir / name} already exists; choose another --name, "
            f"or continue it with --resume {runs_dir / name}",
            exit_code=2,
        )


def create_run_dir(runs_dir: Path, base_name: str, explicit: bool) -> Path:
    """Make a new run directory; never reuse one. ``base_name``, then ``-2``, ``-3`` … unless explicit."""
    check_run_name(base_name)
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
    """config.toml: the settings, and the [run] facts that have a value (TOML has no None: a fact
    without one is left out)."""
    import tomli_w

    table = settings.to_dict()
    table[RUN_SECTION] = {key: value for key, value in facts.items() if value is not None}
    write_text_atomic(run_dir / CONFIG, tomli_w.dumps(table))


def read_config(run_dir: Path) -> tuple[Settings, dict[str, Any]]:
    """The run's settings and its [run] facts; a clear error when it is no run."""
    path = run_dir / CONFIG
    if not run_dir.exists():
        raise UsageError(f"{run_dir} does not exist: pass a run directory (runs/NAME)")
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


# What every epoch record holds; a record without one of them (a hand-edited or foreign file) is left out.
EPOCH_KEYS = ("epoch", "train_loss", "val_dice", "seconds", "images_per_s")


def _complete(record: Any) -> bool:
    return isinstance(record, dict) and all(isinstance(record.get(k), (int, float)) for k in EPOCH_KEYS)


def read_history(run_dir: Path) -> dict[str, Any]:
    """history.json, the one reader every command uses: ``epochs`` (the complete records, in order),
    ``summary`` (a dict, or None while the run has not stopped) and ``partial`` (how many records were
    left out for lacking a figure: the caller may warn). A file that is no history is a PetsegError."""
    path = run_dir / HISTORY
    try:
        history = _read_json(path)
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a petseg run (no {HISTORY})") from None
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise PetsegError(f"{path} does not hold a petseg history (no 'epochs' list)")
    epochs = [e for e in history["epochs"] if _complete(e)]
    summary = history.get("summary") if isinstance(history.get("summary"), dict) else None
    return {**history, "epochs": epochs, "summary": summary, "partial": len(history["epochs"]) - len(epochs)}


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


def best_val_dice(run_dir: Path) -> float | None:
    """The run's best validation Dice; None when it has none (or its history cannot be read)."""
    try:
        return best_epoch(read_history(run_dir))[1]
    except PetsegError:
        return None


def dataset_dir(run_dir: Path) -> Path:
    """The dataset the run was trained on: [run] dataset_path, else [data] data_dir (the first that exists)."""
    settings, facts = read_config(run_dir)
    candidates = [Path(p) for p in (facts.get("dataset_path"), settings.data.data_dir) if p]
    return next((p for p in candidates if p.is_dir()), candidates[-1])


def default_run(runs_dir: Path) -> tuple[Path, str, list[str]]:
    """The run ``infer`` uses when none is named, why, and warnings for runs passed over.

    The rule: among the runs with a best.pth, those trained on the most images; of those, the one with the
    highest best val Dice. So a smoke run on a handful of images (``--limit 8 -e 1``), which may score a
    lucky Dice on one validation image, is never chosen over a run on the whole split."""
    found, warnings = [], []
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not (is_run(run_dir) and (run_dir / BEST).is_file()):
            continue
        try:
            history, facts = read_history(run_dir), read_config(run_dir)[1]
        except PetsegError as exc:
            warnings.append(f"skipped {run_dir}: {exc}")
            continue
        if history["partial"]:
            warnings.append(f"{run_dir / HISTORY}: {history['partial']} epoch record(s) without every figure left out")
        dice = best_epoch(history)[1]
        images = (facts.get("images") or {}).get("train")
        if dice is not None:
            found.append((images if isinstance(images, int) else 0, dice, run_dir))
    if not found:
        raise PetsegError(f"no trained run under {runs_dir}/: train one with `petseg train`, or pass --run RUN")
    images, dice, chosen = max(found, key=lambda item: item[:2])
    why = (
        f"using run {chosen} (best val Dice {dice:.4f}"
        + (f"; the best of the runs trained on the most images, {images}, of {len(found)} under {runs_dir}" if len(found) > 1 else "")
        + "; --run chooses another)"
    )
    return chosen, why, warnings


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


def write_threshold(run_dir: Path, record: dict[str, Any]) -> Path:
    write_json_atomic(run_dir / THRESHOLD, record)
    return run_dir / THRESHOLD


def read_threshold(run_dir: Path) -> float | None:
    """The mask threshold the run chose on its val split, or None (then masks are cut at 0.5)."""
    try:
        value = _read_json(run_dir / THRESHOLD).get("threshold")
    except (FileNotFoundError, PetsegError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and 0 < value < 1 else None


def read_mlflow_run(run_dir: Path) -> dict[str, Any]:
    """mlflow.json; OSError or ValueError where it is missing or unreadable."""
    record = json.loads((run_dir / MLFLOW_RUN).read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{MLFLOW_RUN} holds no object")
    return record


def weights_bytes(run_dir: Path) -> int | None:
    """The size of the run's best.pth, or None before its first finished epoch."""
    path = run_dir / BEST
    return path.stat().st_size if path.is_file() else None


def write_history(run_dir: Path, epochs: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    write_json_atomic(run_dir / HISTORY, {"epochs": epochs, "summary": summary})


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise UsageError(f"--weights must be one of: {', '.join(WEIGHTS)}; got {weights!r}")


def missing_weights(run_dir: Path, weights: str) -> PetsegError:
    """The run has no ``weights`` file: why, and a command that works now. A run that can still train
    (running, or interrupted) writes it when an epoch finishes; a finished one never will: its other
    weights, or a new run."""
    path = run_dir / WEIGHTS[weights]
    try:
        summary = read_history(run_dir)["summary"]
    except PetsegError:
        summary = None
    if summary is None or summary.get("stop_reason") == "interrupted":
        return PetsegError(
            f"{path} does not exist: it is written when an epoch of the run finishes "
            f"(to train the run: petseg train --resume {run_dir})"
        )
    others = [other for other, name in WEIGHTS.items() if other != weights and (run_dir / name).is_file()]
    if others:
        return PetsegError(f"{path} does not exist, and the run has finished; its {WEIGHTS[others[0]]} is there: --weights {others[0]}")
    return PetsegError(f"{path} does not exist, and the run has finished without weights: train a new run (petseg train)")


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
    if not path.is_file():
        raise missing_weights(run_dir, weights)
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
