"""Naming, making and finding run directories under a runs directory."""

from __future__ import annotations

import os
from pathlib import Path

from ..base.errors import PetsegError, UsageError
from .layout import BEST, HISTORY, LOCK, LOCK_HOLDER, is_run
from .lock import check_not_training


def list_runs(runs_dir: Path) -> list[Path]:
    """Every run directory directly under ``runs_dir``; a clear error when there is none."""
    found = sorted(p for p in runs_dir.iterdir() if is_run(p)) if runs_dir.is_dir() else []
    if not found:
        raise UsageError(f"no runs under {runs_dir.resolve()}: pass run directories, or train one with `petseg train`")
    return found


def default_run_name(model: str, batch_size: int, cbam: bool = True) -> str:
    from ..models import MODELS

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


def remove_unstarted_run_dir(run_dir: Path) -> bool:
    """Remove ``run_dir`` when a start killed before its first file left it: empty, or holding only the lock
    of a trainer that is gone (a live one: RunBusyError). Whether it did."""
    left = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None
    if left is None or not left <= {LOCK, LOCK_HOLDER}:
        return False
    check_not_training(run_dir)
    for name in left:
        (run_dir / name).unlink(missing_ok=True)
    run_dir.rmdir()
    return True


def default_run(runs_dir: Path) -> tuple[Path, str, list[str]]:
    """The run ``infer`` uses when none is named, why, and warnings for runs passed over.

    The rule: among the runs with a best.pth, those trained on the most images; of those, the one with the
    highest best val Dice. So a smoke run on a handful of images (``--limit 8 -e 1``), which may score a
    lucky Dice on one validation image, is never chosen over a run on the whole split."""
    from .directory import Run

    found, warnings = [], []
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not (is_run(run_dir) and (run_dir / BEST).is_file()):
            continue
        try:
            run = Run.open(run_dir)
            history = run.history
        except PetsegError as exc:
            warnings.append(f"skipped {run_dir}: {exc}")
            continue
        if history["partial"]:
            warnings.append(f"{run_dir / HISTORY}: {history['partial']} epoch record(s) without every figure left out")
        images = (run.facts.get("images") or {}).get("train")
        if run.best_val_dice is not None:
            found.append((images if isinstance(images, int) else 0, run.best_val_dice, run_dir))
    if not found:
        raise PetsegError(f"no trained run under {runs_dir}/: train one with `petseg train`, or pass --run RUN")
    images, dice, chosen = max(found, key=lambda item: item[:2])
    why = (
        f"using run {chosen} (best val Dice {dice:.4f}"
        + (f"; the best of the runs trained on the most images, {images}, of {len(found)} under {runs_dir}" if len(found) > 1 else "")
        + "; --run chooses another)"
    )
    return chosen, why, warnings
