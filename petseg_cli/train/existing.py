"""``--resume-if-exists``: whether ``runs/<name>`` is started, resumed or left alone because it already
finished. The first process decides and the others receive its decision, so every process of a torchrun
restart (which repeats the command line) trains the same run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..run import check_run_name, remove_unstarted_run_dir
from ..base.errors import PetsegError
from ..machine.distributed import Context
from ..config.settings import Settings
from .validation import validate_settings
from .resume import why_finished


@dataclass(frozen=True)
class RunChoice:
    settings: Settings  # what to train with: the new run's, or the resumed run's (its config.toml and the flags)
    resume: Path | None  # the run to continue; None: start runs/<name>
    finished: str | None = None  # why the run needs no more training: nothing trains


def choose_run(run_dir: Path, new: Settings, resumed: Callable[[Path], Settings]) -> RunChoice:
    """Resume ``run_dir`` when it is a run that can train on, leave it when it finished, start it when it
    does not exist. ``resumed`` gives a run's settings with the flags (refusing a changed experiment)."""
    check_run_name(run_dir.name)
    if not run_dir.exists():
        return RunChoice(new, None)
    if remove_unstarted_run_dir(run_dir):  # a start killed before it wrote its first file
        return RunChoice(new, None)
    settings = validate_settings(resumed(run_dir))  # a UsageError when it is no run, or a flag changes the experiment
    reason = why_finished(run_dir, settings)
    if reason is not None:
        return RunChoice(settings, run_dir, finished=f"nothing to train: {reason}")
    return RunChoice(settings, run_dir)


def agree_on_run(dist: Context, run_dir: Path, new: Settings, resumed: Callable[[Path], Settings]) -> RunChoice:
    """``choose_run`` in the first process, its answer (or its error, raised) in every process."""
    choice, error = None, None
    if dist.is_main:
        try:
            choice = choose_run(run_dir, new, resumed)
        except PetsegError as exc:
            error = (str(exc), exc.exit_code)
    choice, error = dist.broadcast_object((choice, error))
    if error is not None:
        raise PetsegError(*error)
    return choice
