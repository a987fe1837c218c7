"""The rules for resuming a run: which settings may change, which runs can train on, and the settings
a resumed run trains with (its own config.toml, then the flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..run import LAST, Run
from ..base.errors import PetsegError, UsageError
from ..base.formatting import duration, parse_duration
from ..config.settings import Settings, load_settings
from .result import COMPLETED, EARLY_STOP, TIME_UP


def optimizer_dropped_message(run_dir: Path) -> str:
    return (
        f"{run_dir} cannot be resumed: its optimiser state was dropped from {LAST} when it finished "
        f"(train with --keep-optimizer to keep it); start a new run instead"
    )


def train_settings(
    config: Path | None,
    overrides: dict[str, dict[str, Any]],
    name: str | None = None,
    resume: Path | None = None,
    flag_names: dict[tuple[str, str], str] | None = None,
) -> Settings:
    """The settings ``petseg train`` trains with: petseg.toml (or ``config``) and ``overrides`` for a
    new run; for ``resume``, the run's own config.toml and the overrides it allows. ``flag_names``:
    the flags of settings whose flag is not --<key with dashes>, for the messages."""
    if resume is None:
        return load_settings(config, overrides)
    for flag, value in (("--name", name), ("--config", config)):
        if value is not None:
            raise UsageError(f"{flag} cannot be used with --resume: a resumed run keeps its name and its own config.toml")
    base = Run.open(resume).settings
    check_resume_overrides(resume, base, overrides, flag_names or {})
    return load_settings(None, overrides, base=base)


# What a resumed run may change: how long it trains and how the machine computes it. Everything else
# (model, data, sizes, seed, augmentation, optimisation) would mix two experiments in one history.
RESUMABLE_SETTINGS = frozenset(
    {
        ("train", "epochs"),
        ("train", "patience"),
        ("train", "time"),
        ("train", "device"),
        ("train", "workers"),
        ("train", "precision"),
        ("train", "channels_last"),
        ("train", "compile"),
        ("train", "keep_optimizer"),
        ("train", "loggers"),  # where the epochs are logged, not what they are
        ("data", "cache"),
        ("data", "data_dir"),  # the same dataset, where this machine keeps it
    }
)


def check_resume_overrides(
    run_dir: Path, run_settings: Settings, given: dict[str, dict[str, Any]], flag_names: dict[tuple[str, str], str]
) -> None:
    """Refuse a flag given with ``--resume`` that would change the experiment (one the run already has is fine)."""
    for section, values in given.items():
        for key, value in values.items():
            if value is None or (section, key) in RESUMABLE_SETTINGS:
                continue
            run_value = getattr(getattr(run_settings, section), key)
            if value == run_value:
                continue
            flag = flag_names.get((section, key), f"--{key.replace('_', '-')}")
            raise UsageError(
                f"{flag} cannot change when resuming: {run_dir} was trained with {section}.{key} = "
                f"{run_value!r}; start a new run for {value!r} (with --resume only "
                f"{', '.join(sorted(flag_names.get(k, '--' + k[1].replace('_', '-')) for k in RESUMABLE_SETTINGS))} may change)"
            )


def check_resumable(run_dir: Path, settings: Settings) -> None:
    """Refuse a directory that is no run, or a run that would stop again at once, saying what would
    make it train longer."""
    reason = why_finished(run_dir, settings)
    if reason is not None:
        raise PetsegError(reason, exit_code=2)


def why_finished(run_dir: Path, settings: Settings) -> str | None:
    """Why ``run_dir`` would stop again at once with ``settings`` (finished, stopped early, its optimiser
    state dropped), saying what would make it train longer; None when it can train on. Raises a
    UsageError for a directory that is no run."""
    run = Run.open(run_dir)
    run_settings, history = run.settings, run.history  # history.json read tolerantly of a partial record
    done = max((e["epoch"] for e in history["epochs"] if isinstance(e, dict) and isinstance(e.get("epoch"), int)), default=0)
    summary = history.get("summary") or {}
    reason = summary.get("stop_reason")
    if summary.get("optimizer_kept") is False:  # nothing can make it train on: say that first
        return optimizer_dropped_message(run_dir)
    patience = run_settings.train.patience
    if reason == EARLY_STOP and 0 < settings.train.patience <= patience:
        return (
            f"{run_dir} stopped early after epoch {done} (val Dice did not improve for {patience} epochs); "
            f"to train it longer, resume with --patience larger than {patience} (or 0: no early stopping)"
        )
    used = summary.get("time_used_seconds") or 0.0
    budget = parse_duration(settings.train.time)  # 0: none (--time 0 or ""), --epochs alone ends the run
    if reason == TIME_UP and budget and budget <= used:
        return (
            f"{run_dir} used its time budget ({duration(used)} after epoch {done}); to train it longer, resume with "
            f"--time larger than {duration(used)} (or --time 0: no budget)"
        )
    if done >= settings.train.epochs:
        return (
            f"{run_dir} already finished ({reason or COMPLETED} after epoch {done}); "
            f"to train it longer, resume with --epochs larger than {done}"
        )
    return None
