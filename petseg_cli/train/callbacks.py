"""What the training loop tells the rest of a training, and when: a Callback's fixed points (as Lightning's
Callback and Composer's events have them), the loop's state they read and change, and the list the loop
calls. A feature of training (the EMA, the time budget, the size schedule, the files, the trackers, the
lines and the bar, early stopping) is a callback; command.py lists them; loop.py calls them by point,
never by name.

The points, in the order a run meets them:

- ``on_train_start``: before the first epoch of this session.
- ``on_epoch_start``: before an epoch trains (``loop.epoch``); it may stop the run (the time is up), and
  sets the epoch's training size (``loop.size``).
- ``on_step_end``: after every optimiser step. ``loop.checking`` says that the loss is read after this
  step, in one collective of every process: a callback may set ``loop.plan`` (the epochs that fit a
  time budget), which becomes every process's schedule horizon.
- ``on_check``: after that read: ``loop.loss`` (the mean so far), ``loop.seen`` images, ``loop.fraction``
  of the epoch's steps, in ``loop.elapsed`` seconds.
- ``on_validation_start``: the epoch's training is done, its validation begins.
- ``on_validation_end``: ``loop.record`` (history.json's record of the epoch) is complete but for what
  callbacks add to it here; it is recorded into ``loop.progress`` next.
- ``on_save``: the epoch's files are written (or, stopped before they began, the epoch is taken back:
  ``loop.unrecord``).
- ``on_epoch_end``: after the files: ``loop.improved`` says whether the epoch is the best so far; it may
  stop the run (early stopping).
- ``on_train_end``: the run stops (``loop.stop_reason``, with ``loop.fault`` for a diverged run).

A callback stops the run with ``loop.stop_run``: the point's later callbacks are not called, and the
loop ends."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

EVENTS = (
    "on_train_start", "on_epoch_start", "on_step_end", "on_check", "on_validation_start", "on_validation_end",
    "on_save", "on_epoch_end", "on_train_end",
)


@dataclass
class Loop:
    """The training loop's state, as the callbacks see it. (This module imports nothing of the training's,
    whose modules import it: ``training`` is a setup.Training, ``progress`` a progress.Progress.)"""

    training: Any
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop at the next batch
    progress: Any = None  # the epochs so far
    start_epoch: int = 0  # the last epoch finished before this session
    epoch: int = 0
    size: int = 0  # the epoch's training size
    steps: int = 0  # of the epoch
    batch: int = 0  # the step just taken
    checking: bool = False  # the loss is read after this step
    plan: int = 0  # set at a check: every process's last epoch (0: no change)
    loss: float = 0.0  # at a check: the epoch's mean training loss so far
    seen: float = 0.0  # and the images it saw
    fraction: float = 0.0  # of the epoch's steps
    elapsed: float = 0.0  # seconds since the epoch's training began
    record: dict[str, Any] = field(default_factory=dict)  # the epoch's history record
    degenerate: str | None = None  # a warning when the model is degenerate
    improved: bool = False  # the epoch's val Dice is the best so far
    stop_reason: str | None = None
    fault: str = ""  # what went wrong, for a diverged run
    _before: Any = None

    def stop_run(self, reason: str, fault: str = "") -> None:
        self.stop_reason, self.fault = reason, fault

    def record_epoch(self) -> None:
        """Add the epoch's record to the progress (``unrecord`` takes it back)."""
        self._before = replace(self.progress, epochs=list(self.progress.epochs))
        self.improved = self.progress.record(self.record)

    def unrecord(self) -> None:
        self.progress.rewind(self._before)


class Callback:
    """Does nothing at every point; a callback overrides the points it acts at."""

    def on_train_start(self, loop: Loop) -> None: ...
    def on_epoch_start(self, loop: Loop) -> None: ...
    def on_step_end(self, loop: Loop) -> None: ...
    def on_check(self, loop: Loop) -> None: ...
    def on_validation_start(self, loop: Loop) -> None: ...
    def on_validation_end(self, loop: Loop) -> None: ...
    def on_save(self, loop: Loop) -> None: ...
    def on_epoch_end(self, loop: Loop) -> None: ...
    def on_train_end(self, loop: Loop) -> None: ...


class Callbacks:
    """The callbacks, called in their order at each point (only those that act at it)."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        self.at: dict[str, list[Callable[[Loop], None]]] = {
            event: [getattr(c, event) for c in self.callbacks if getattr(type(c), event) is not getattr(Callback, event)]
            for event in EVENTS
        }

    def fire(self, event: str, loop: Loop) -> bool:
        """Call ``event``'s callbacks, until one stops the run; whether it goes on (once it stopped, every
        callback is called: at on_train_end)."""
        if loop.stop_reason is not None:
            for call in self.at[event]:
                call(loop)
            return False
        for call in self.at[event]:
            call(loop)
            if loop.stop_reason is not None:
                return False
        return True
