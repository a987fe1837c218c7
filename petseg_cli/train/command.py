"""``petseg train``: open the run, set up the machine, the data and the model, run the loop, and
return what happened (cli.py renders it).

Under torchrun every process calls ``train``; they train together and the first one writes and prints."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..base import files
from ..base.console import err, info, out, warn
from ..base.formatting import duration, parse_duration
from ..machine.compile import use_petseg_cache
from ..machine.devices import resolve_device
from ..machine.distributed import Context
from ..models.size_schedule import parse_size_schedule
from .optim import early_stop_warning
from ..run import LAST, Run, TrainingLock, check_new_run_name, create_run_dir, default_run_name, discard_new_run_dir, write_history
from ..config.settings import Settings
from ..run.trackers import Trackers, check_installed, open_trackers
from .validation import validate_settings as validate
from .bar import Bar
from .callbacks import Callback, Callbacks
from .clock import TIMED_STEPS, Budget, RunClock, estimate_epoch_seconds, plan_epochs, process_start, worth_timing
from .ema import UpdateEMA
from .existing import agree_on_run
from .facts import now, run_facts, speed_facts
from .loaders import check_dataset, load_data
from .loop import run_epochs
from .machine import prepare_machine
from .progress import EarlyStopping, EpochLines, Progress
from .result import ALREADY_FINISHED, COMPLETED, EARLY_STOP, TIME_UP, TrainResult
from .resume import check_resumable
from .samples import Tracking
from .saving import SaveEpoch, last_of_a_finished_run, restore, save_last
from .setup import Training
from .signals import StopSignals
from .sizes import Resizing


def train(
    settings: Settings,
    name: str | None = None,
    resume: Path | None = None,
    stop: threading.Event | None = None,
    resume_if_exists: Callable[[Path], Settings] | None = None,
    remeasure: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train into a new run directory, or continue ``resume`` (then ``settings`` are the run's own
    config.toml overlaid with the command line's flags: ``resume.train_settings``). With
    ``resume_if_exists`` (a run's settings with the flags), runs/<name> is resumed when it exists, left
    alone when it finished, started otherwise: the first process decides, as existing.py says.
    ``remeasure``: precision auto measures again rather than use its cached verdict. ``callbacks`` are
    called at the loop's points after the training's own (callbacks.py)."""
    dist = Context.from_env()
    if not dist.is_main:
        out.quiet = err.quiet = True
    stop = stop or threading.Event()
    settings = validate(settings)
    check_installed(settings.train.loggers)  # a missing tracker package: one line, before any work
    # The user's input, all of it, before anything is imported for compiling, measured or loaded.
    if resume is not None:
        check_resumable(resume, settings)
    elif name is not None and resume_if_exists is None:
        check_new_run_name(Path(settings.train.runs_dir), name)
    device = dist.device(resolve_device(settings.train.device))
    check_dataset(Path(settings.data.data_dir))
    if settings.train.compile is not False:
        use_petseg_cache()  # before anything imports torch._dynamo, which would fix its own default
    dist.start(device)
    try:
        if resume_if_exists is not None and name is not None:
            choice = agree_on_run(dist, Path(settings.train.runs_dir) / name, settings, resume_if_exists)
            if choice.finished is not None:
                return TrainResult(run_dir=Path(settings.train.runs_dir) / name, stop_reason=ALREADY_FINISHED,
                                   best_epoch=0, best_val_dice=0.0, note=choice.finished)
            settings, resume = choice.settings, choice.resume
        return _train(settings, device, dist, name, resume, stop, remeasure, callbacks)
    finally:
        dist.stop()


def open_run(settings: Settings, name: str | None, resume: Path | None, dist: Context) -> Path:
    """The run directory: ``resume``, or a new one under ``runs_dir`` (made by the first process, its
    name shared with the others)."""
    if resume is not None:
        return resume
    run_dir = None
    if dist.is_main:
        base = name or default_run_name(settings.model.name, settings.train.batch_size, settings.model.cbam)
        run_dir = create_run_dir(Path(settings.train.runs_dir), base, explicit=name is not None)
    return Path(dist.broadcast_object(str(run_dir) if run_dir else None))


def _train(
    settings: Settings, device: torch.device, dist: Context, name: str | None, resume: Path | None, stop: threading.Event,
    remeasure: bool = False, callbacks: Sequence[Callback] = (),
) -> TrainResult:
    data_dir = Path(settings.data.data_dir)
    runs_dir_existed = Path(settings.train.runs_dir).is_dir()
    # 1. The run, 2. the machine, the data and the model, 3. the loop.
    run_dir = open_run(settings, name, resume, dist)
    # The first process trains the run alone: a second training of it fails here, naming this one.
    with TrainingLock(run_dir, enabled=dist.is_main) as lock:
        try:
            resumed = Run.open(resume) if resume is not None else None  # its config read once, here
            kept = resumed.facts.get("precision") if resumed is not None else None
            machine = prepare_machine(settings, device, dist, remeasure, kept)
            training = Training(settings, run_dir, machine, load_data(settings, data_dir), pretrained=resume is None)
            if resume is None:
                training.compile_model(start_epoch=0)  # a resumed run decides once it knows the epochs left
        except BaseException:
            if resume is None and dist.is_main:  # a data error (or Ctrl-C while loading) leaves no empty run behind
                lock.release()
                discard_new_run_dir(run_dir, remove_parent=not runs_dir_existed)
            raise

        signals = StopSignals(stop)  # from here on, Ctrl-C stops training with the run's files whole
        with signals.installed():
            start_epoch, progress = _start(training, data_dir, resumed)
            signals.saved_epoch = start_epoch
            return _run(training, progress, start_epoch, stop, signals, callbacks)


def _start(training: Training, data_dir: Path, resumed: Run | None) -> tuple[int, Progress]:
    """Write a new run's first files, or restore the ``resumed`` run into ``training``; the last finished
    epoch and the progress up to it."""
    main, run_dir, settings = training.dist.is_main, training.run_dir, training.settings
    if resumed is None:
        if main:
            Run.create(run_dir, settings, run_facts(training, data_dir))
        return 0, Progress()
    if main:
        files.remove_temporary_files(run_dir)  # what a killed save left behind
    # Killed before its first epoch finished: there is nothing to restore, start it over.
    start_epoch, progress = restore(training) if (run_dir / LAST).is_file() else (0, Progress())
    training.compile_model(start_epoch)
    if main:
        resumed.write_config(settings, {**resumed.facts, **speed_facts(training), "resumed_at": now()})
    if start_epoch:
        info(f"resuming {run_dir} after epoch {start_epoch}")
    else:
        info(f"no epoch of {run_dir} had finished: training it from the beginning")
    return start_epoch, progress


def announce_training(training: Training, start_epoch: int, progress: Progress, resizing: Resizing | None = None) -> RunClock:
    """Say what trains where, and how long it should take; the clock that keeps that estimate (and
    plans a budget with what each epoch's size costs, with ``resizing``)."""
    settings, dist, t, s = training.settings, training.dist, training.settings.train, training.splits
    processes = f" in {dist.world_size} processes" if dist.enabled else ""
    info(
        f"training {settings.model.name} ({training.parameters:,} parameters) on {training.device}{processes} into "
        f"{training.run_dir}: {len(s['train'])} train / {len(s['val'])} val images at {size_text(settings)}, "
        f"batch {t.batch_size}, {training.precision.name}{', compiled' if training.compiled.enabled else ''}"
        + (f", EMA {t.ema}" if training.ema is not None else "")
    )
    if training.machine.verdict is not None:  # precision auto: what it measured, or the rule (machine/probe.py)
        info(f"precision auto chose {training.machine.verdict.describe()}")
    cut = early_stop_warning(t)
    if cut:
        warn(cut)
    budget = parse_duration(t.time)
    clock = RunClock(t.epochs - start_epoch, None, budget, used_before(progress) if budget else 0.0,
                     started=process_start(), one_off=lambda: training.compile_seconds)
    run_steps = (t.epochs - start_epoch) * len(training.train_loader)
    timed = budget or resizing is not None or worth_timing(run_steps)  # a budget's plan needs a pace at once
    clock.epoch_seconds = epoch_seconds = estimate_epoch_seconds(training) if timed else None
    if resizing is not None:  # what a step at each smaller size costs, measured
        resizing.measure_steps(epoch_seconds)
        clock.cost = resizing.cost
    clock.begin_epochs()
    if budget:
        info(budget_line(training, clock, start_epoch))
        if clock.first_epoch_overruns(start_epoch):
            warn(overrun_warning(training, clock))
    elif epoch_seconds is not None:
        epochs_left = t.epochs - start_epoch
        full_size = sum(clock.cost(e, t.epochs) for e in range(start_epoch + 1, t.epochs + 1)) if clock.cost else epochs_left
        info(
            f"estimated time: {duration(epoch_seconds)} per epoch{' at the final size' if clock.cost else ''}, "
            f"{duration(epoch_seconds * full_size)} for "
            f"{epochs_left} epoch{'s' * (epochs_left != 1)} (less if it stops early; from {TIMED_STEPS} timed steps)"
        )
    elif not timed:
        info(f"estimated time: after epoch {start_epoch + 1} (a run of {run_steps} training steps is too short to time some first)")
    return clock


def size_text(settings: Settings) -> str:
    """The run's image size, or its schedule growing to it."""
    schedule = parse_size_schedule(settings.data.size_schedule)
    if schedule is None or len(schedule.sizes) == 1:
        return f"{settings.data.image_size}px"
    return f"{schedule.sizes[0]}px growing to {schedule.final}px (size@fraction of the epochs: {schedule.text()})"


def used_before(progress: Progress) -> float:
    """The budget a resumed run used before: as its last epoch recorded it (else its epochs' seconds)."""
    if not progress.epochs:
        return 0.0
    return float(progress.epochs[-1].get("time_used", sum(e["seconds"] for e in progress.epochs)))


def budget_line(training: Training, clock: RunClock, start_epoch: int) -> str:
    """The budget, what is left of it, and the epochs estimated to fit (the schedule's first horizon);
    config.toml's [run] records them."""
    t = training.settings.train
    planned = plan_epochs(training, clock, start_epoch)
    per_epoch = "?" if clock.epoch_seconds is None else duration(clock.epoch_seconds)
    if training.dist.is_main:
        run = Run.open(training.run_dir)
        facts = {**run.facts, "time_budget_seconds": clock.budget,
                 "time_used_before_seconds": round(clock.used_before, 3), "time_estimated_epoch_seconds": clock.epoch_seconds,
                 "time_estimated_epochs": planned}
        run.write_config(training.settings, facts)
    return (
        f"time budget {duration(clock.budget)} ({duration(max(clock.budget - clock.used(), 0))} left): about {per_epoch} "
        f"per epoch (from {TIMED_STEPS} timed{' eager' if training.compiled.enabled else ''} steps), so {planned} epoch{'s' * (planned != 1)} of at most {t.epochs}; "
        f"the {t.scheduler} schedule is fitted to them, re-planned after every epoch"
    )


def overrun_warning(training: Training, clock: RunClock) -> str:
    """What a budget too small for one epoch leads to, and the fixes."""
    return (
        f"one epoch takes about {duration(clock.pace() or 0)}, more than the {duration(max(clock.budget - clock.used(), 0))} "
        f"left of the --time budget: the run will overrun it by that epoch. Give more --time, train on fewer photos "
        f"(--limit N), or use a smaller --image-size"
    )


def _run(
    training: Training, progress: Progress, start_epoch: int, stop: threading.Event, signals: StopSignals,
    extra: Sequence[Callback] = (),
) -> TrainResult:
    """The epochs, then the run's last files: history's summary, and last.pth without its optimiser
    state once a finished run need not be resumed."""
    resizing = Resizing.of(training, progress)
    clock = announce_training(training, start_epoch, progress, resizing)
    trackers = open_trackers(training.settings.train.loggers if training.dist.is_main else [], training.run_dir, start_epoch)
    stop_reason = "failed"  # what the trackers are told if an exception ends the run
    try:
        callbacks = training_callbacks(training, signals, clock, trackers, resizing, extra)
        stop_reason = run_epochs(training, progress, start_epoch, stop, callbacks)
        return _finish(training, progress, stop_reason, signals, clock)
    finally:
        trackers.close(stop_reason)  # after the last files, which the trackers keep


def training_callbacks(
    training: Training, signals: StopSignals, clock: RunClock, trackers: Trackers, resizing: Resizing | None,
    extra: Sequence[Callback] = (),
) -> Callbacks:
    """What a training does besides its steps, in the order each point calls it (then ``extra``): the
    EMA's step; the files, then the trackers, then the clock (which counts their time in the epoch's);
    the size (after the clock has said whether another epoch fits), then the bar (of that size's
    steps); the epoch's line, then early stopping."""
    listed = [
        UpdateEMA(training.ema, training.model) if training.ema is not None else None,
        SaveEpoch(signals),
        Tracking(trackers),
        Budget(training, clock),
        resizing,
        Bar(clock),
        EpochLines(clock, sized=resizing is not None),
        EarlyStopping(training.settings.train.patience),
        training.background,
        *extra,
    ]
    return Callbacks(callback for callback in listed if callback is not None)


def _finish(training: Training, progress: Progress, stop_reason: str, signals: StopSignals, clock: RunClock) -> TrainResult:
    # SaveEpoch already wrote the configured last epoch's last.pth without the optimiser: that run is
    # finished whatever stopped it after the save, and its file needs no second write.
    dropped = bool(progress.epochs) and last_of_a_finished_run(training, progress.epochs[-1]["epoch"])
    finished = dropped or stop_reason in (COMPLETED, EARLY_STOP, TIME_UP)
    keep_optimizer = training.settings.train.keep_optimizer or not finished
    try:
        with signals.saving(signals.saved_epoch):
            if training.dist.is_main:
                if not keep_optimizer and progress.epochs and not dropped:
                    save_last(training, progress, progress.epochs[-1]["epoch"], optimizer_state=False)
                summary = {**progress.summary(stop_reason, keep_optimizer, training.weights, training.parameters), **clock.record()}
                write_history(training.run_dir, progress.epochs, summary)
    except KeyboardInterrupt:  # a signal while the last files were written: they are whole, the run is as said
        pass
    return TrainResult(
        run_dir=training.run_dir,
        stop_reason=stop_reason,
        best_epoch=progress.best_epoch,
        best_val_dice=progress.best_val_dice,
        saved_epoch=signals.saved_epoch,
        optimizer_kept=keep_optimizer,
        weights=training.weights,
    )
