"""The time left for the whole run, and the timed step that estimates it before the first epoch."""

from __future__ import annotations

import copy
import os
import time
from typing import TYPE_CHECKING, Callable

import torch

from ..base.console import info
from ..base.formatting import duration
from .callbacks import Callback, Loop
from .result import TIME_UP

if TYPE_CHECKING:
    from .setup import Training


# The first estimate of an epoch's time: the median of this many training steps (after one warm-up step).
TIMED_STEPS = 3
# The steps are timed only when they cost at most this share of the run's training steps: a shorter run
# learns its pace from its first epoch instead (an estimate that costs more than an epoch is not worth it).
MOST_TIMED_SHARE = 0.1
# A budgeted run plans another epoch while it is estimated to end within the budget plus this share
# (the issue allows 5% over, validation and the last save included: the rest is the estimate's margin).
BUDGET_SLACK = 0.02
# What --time promises: the run ends within this share over its budget, unless its first epoch alone is
# longer (then it says so before training).
BUDGET_OVERRUN = 0.05


class RunClock:
    """The time left for the whole run: from timed steps before the first epoch, then from the epochs.
    With a time budget (``budget`` seconds, ``used_before`` of them spent before a resume) it also
    plans the epochs that fit. The budget is counted from ``started`` (by default now; a command passes
    its process's start, process_start(), so that start-up counts) as ``timer`` (a monotonic clock)
    measures it. ``one_off()`` is the seconds spent so far on one-off work within the epochs (a
    compiled model's first calls): used from the budget, but left out of the epochs' pace."""

    def __init__(
        self, epochs_left: int, estimated_epoch_seconds: float | None, budget: float = 0.0, used_before: float = 0.0,
        timer: Callable[[], float] = time.monotonic, started: float | None = None,
        one_off: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.epochs_left = epochs_left
        self.epoch_seconds = estimated_epoch_seconds
        self.finished: list[float] = []
        self.budget, self.used_before, self.timer, self.one_off = budget, used_before, timer, one_off
        self.started = timer() if started is None else started
        self.estimates: list[int] = []  # the epochs planned to fit, before the first epoch and after each
        # Progressive resizing (sizes.py): epoch e's time as a share of a full-size epoch's when the run
        # ends at epoch n, cost(e, n); None: every epoch costs the same. The pace is then per full-size epoch.
        self.cost: Callable[[int, int], float] | None = None
        self.work: list[float] = []  # each finished epoch's cost
        self.walls: list[float] = []  # and its wall-clock time, saving included, one-off work not
        self.begin_epochs()

    def begin_epochs(self) -> None:
        """The epochs start now (after the timed steps): the first epoch's wall clock counts from here."""
        self.mark, self.one_off_at_mark = self.timer(), self.one_off()

    def epoch_done(self, seconds: float, cost: float = 1.0) -> None:
        """An epoch took ``seconds`` (training and validation) and ``cost`` of a full-size epoch's work."""
        now, one_off = self.timer(), self.one_off() - self.one_off_at_mark
        self.walls.append(max(now - self.mark - one_off, 0.0))
        self.finished.append(max(seconds - one_off, 0.0))
        self.work.append(cost)
        self.begin_epochs()
        self.epochs_left -= 1
        self.epoch_seconds = sum(self.finished) / len(self.finished)

    def used(self) -> float:
        """Seconds of the budget used: before a resume, and since this clock started."""
        return self.used_before + self.timer() - self.started

    def pace(self, partial: float = 0.0) -> float | None:
        """Seconds per (full-size) epoch: from the epochs run, else from ``partial`` of the first one
        (every epoch costing the same), else the estimate; None before any estimate."""
        if self.walls:
            return sum(self.walls) / sum(self.work)
        if partial and self.cost is None:
            return max(self.timer() - self.mark - (self.one_off() - self.one_off_at_mark), 0.0) / partial
        return self.epoch_seconds

    def plan(self, done: int, most: int, partial: float = 0.0) -> int:
        """The run's last epoch, ``done`` having finished (and ``partial`` of the next one's training,
        during an epoch): as many as fit in what is left of the budget at this session's pace per epoch
        (before any: the estimate), at most ``most``; an epoch begun, and the first, always finish.
        A plan between epochs is kept in ``estimates``."""
        pace = self.pace(partial)
        if not pace:  # no estimate yet: plan the most, re-plan after the first epoch
            fit = most
        elif self.cost is None:
            fit = int(done + partial + max(self.budget * (1 + BUDGET_SLACK) - self.used(), 0.0) / pace)
        else:
            fit = self.fit(done, most, partial, pace)
        planned = min(max(fit, done + 1 if partial else 1), most)
        if not partial:
            self.estimates.append(planned)
            self.epochs_left = max(planned - done, 0)
        return planned

    def first_epoch_overruns(self, done: int) -> bool:
        """Whether the next epoch alone, at the estimated pace, ends past the budget and its BUDGET_OVERRUN."""
        pace = self.pace()
        if not self.budget or not pace:
            return False
        share = self.cost(done + 1, done + 1) if self.cost is not None else 1.0
        return share * pace > self.budget * (1 + BUDGET_OVERRUN) - self.used()

    def fit(self, done: int, most: int, partial: float, pace: float) -> int:
        """The last epoch of the longest run whose epochs left, at their costs, fit what is left of the
        budget (``partial`` of epoch done + 1 having trained)."""
        left = self.budget * (1 + BUDGET_SLACK) - self.used()
        fit = done
        for last in range(done + 1, most + 1):
            share = (1 - partial) * self.cost(done + 1, last) + sum(self.cost(e, last) for e in range(done + 2, last + 1))
            if share * pace > left:
                break
            fit = last
        return fit

    def left(self) -> str:
        if self.epoch_seconds is None:
            return "?"
        seconds = self.epochs_left * self.epoch_seconds
        return duration(min(seconds, max(self.budget - self.used(), 0.0)) if self.budget else seconds)

    def left_during_training(self, done: float, elapsed: float) -> str:
        """Left for the run, ``done`` (0-1) of the current epoch's training having taken ``elapsed`` s."""
        if self.epoch_seconds is None:
            return "?"
        in_epoch = max(self.epoch_seconds - elapsed, 0.0) if self.finished else self.epoch_seconds * (1 - done)
        seconds = in_epoch + (self.epochs_left - 1) * self.epoch_seconds
        return duration(min(seconds, max(self.budget - self.used(), 0.0)) if self.budget else seconds)

    def record(self) -> dict[str, object]:
        """What history.json's summary keeps of a budgeted run; nothing without a budget."""
        if not self.budget:
            return {}
        return {"time_budget_seconds": self.budget, "time_used_seconds": round(self.used(), 3), "time_planned_epochs": self.estimates}


class Budget(Callback):
    """The clock through the epochs: each epoch's time; with a time budget, the epochs that fit re-planned
    at every check and after every epoch (the schedule ends when the time does), each record's time used,
    and the run stopped when too little is left for another epoch."""

    def __init__(self, training: Training, clock: RunClock) -> None:
        self.training, self.clock = training, clock

    def on_epoch_start(self, loop: Loop) -> None:
        # A budget's plan: made as the run was announced (train/command.py), then after every epoch.
        clock, epoch = self.clock, loop.epoch
        if clock.budget and epoch > self.training.horizon.epochs:
            info(f"time is up: {duration(clock.used())} of the {duration(clock.budget)} budget used, too little left for epoch {epoch}")
            loop.stop_run(TIME_UP)

    def on_step_end(self, loop: Loop) -> None:
        if loop.checking and self.clock.budget:
            loop.plan = self.clock.plan(loop.epoch - 1, self.training.settings.train.epochs, loop.fraction)

    def on_validation_end(self, loop: Loop) -> None:
        if self.clock.budget:
            loop.record["time_used"] = round(self.clock.used(), 3)

    def on_epoch_end(self, loop: Loop) -> None:
        clock, epoch = self.clock, loop.epoch
        clock.epoch_done(loop.record["seconds"], clock.cost(epoch, self.training.horizon.epochs) if clock.cost else 1.0)
        if clock.budget:
            plan_epochs(self.training, clock, epoch)


def plan_epochs(training: Training, clock: RunClock, done: int) -> int:
    """The run's last epoch under its time budget, ``done`` having finished: the first process's plan,
    in every process (so all stop together and follow one schedule), which the schedule then ends at."""
    mine = clock.plan(done, training.settings.train.epochs) if training.dist.is_main else 0
    planned = int(training.dist.sum([float(mine)], training.device)[0])
    training.horizon.epochs = planned
    return planned


def process_start(timer: Callable[[], float] = time.monotonic) -> float:
    """When this process started, on ``timer``'s (monotonic) scale: its age from /proc where Linux has it,
    else now (the caller's start)."""
    now = timer()
    try:
        with open("/proc/self/stat", encoding="ascii") as stat, open("/proc/uptime", encoding="ascii") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            age = float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - max(age, 0.0)


def worth_timing(run_steps: int) -> bool:
    """Whether timing steps before a run of ``run_steps`` training steps costs little enough of it."""
    return 1 + TIMED_STEPS <= MOST_TIMED_SHARE * run_steps


def estimate_epoch_seconds(training: Training) -> float:
    """One epoch's training and validation, from TIMED_STEPS timed steps (validation: a forward pass, about a third)."""
    step = time_one_step(training)
    return step * (len(training.train_loader) + len(training.val_loader) / 3)


def time_one_step(training: Training, size: int | None = None) -> float:
    """Seconds of a training step (the median of TIMED_STEPS) (forward and backward on a batch of random images, at
    ``size``, else the run's image size), timed before the first epoch; nothing of the model, its statistics or
    the random state changes. The steps run the model itself, never its compiled wrapper (whose first step
    compiles, which says nothing of the others): for a compiled run the figure is the eager pace, which its
    compiled steps only beat, and the plan is re-made from the epochs' own seconds once they have run."""
    size, batch = size or training.settings.data.image_size, training.dist.per_rank_batch(training.settings.train.batch_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).to(training.device, memory_format=training.memory_format)
    masks = torch.randint(0, 2, (batch, size, size), generator=generator).to(training.device)
    buffers = copy.deepcopy(dict(training.model.named_buffers()))  # BatchNorm statistics
    training.model.train()
    seconds = []
    for _ in range(1 + TIMED_STEPS):  # the first step allocates and warms up: time the others
        started = time.perf_counter()
        with training.precision.autocast():
            loss = training.loss_fn(training.model(images), masks)
        loss.backward()
        if training.device.type == "cuda":
            torch.cuda.synchronize(training.device)
        seconds.append(time.perf_counter() - started)
    training.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in training.model.named_buffers():
            buffer.copy_(buffers[name])
    return sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median: one slow step (a busy machine) does not decide it

