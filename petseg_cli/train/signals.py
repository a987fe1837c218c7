"""What SIGINT and SIGTERM do during training, and how a signal handler says so."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ..base.console import wrapped
from .result import Interrupted


def announce(message: str) -> None:
    """A warning on a line of its own, from a signal handler: written straight to the file descriptor
    (no library that may be half-way through an import or a write of its own), on a terminal after
    clearing the progress bar's line (the bar draws itself again below) and wrapped at its width between
    words, as console.fitted wraps."""
    stream = sys.stderr
    text = f"warning: {message}\n"
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file
        stream.write(text)
        return
    if not os.isatty(fd):
        os.write(fd, text.encode())
        return
    columns = os.get_terminal_size(fd).columns  # 0 where the terminal has no size set: one line, as in a pipe
    lines = wrapped(text.rstrip("\n"), columns) if columns > 0 else [text.rstrip("\n")]
    os.write(fd, ("\r\x1b[2K" + "\n".join(lines) + "\n").encode())


class StopSignals:
    """What SIGINT and SIGTERM do during training.

    The first one sets ``event``: the loop stops at the next batch and the epoch in progress is dropped. A
    second one stops at once, except while the run's files are being written (``saving``): that write
    finishes first, then training stops. So the files always describe the last finished epoch whole.
    Every message says what the run will really keep.
    """

    def __init__(self, event: threading.Event, saved_epoch: int = 0) -> None:
        self.event = event
        self.saved_epoch = saved_epoch  # the last epoch whose files are written (0: none)
        self.saving_epoch: int | None = None  # the epoch being written, while it is
        self.discard_unsaved = False  # a signal came before the save of the finished epoch began
        self.stop_after_save = False  # a second signal came during a save

    def _kept(self) -> str:
        if self.saved_epoch:
            return f"the run keeps epoch {self.saved_epoch} (petseg train --resume continues from it)"
        return "no epoch has finished, so the run keeps no weights (petseg train --resume starts it from the beginning)"

    def handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.saving_epoch is not None:
            if self.event.is_set():
                self.stop_after_save = True
                announce(f"{name} received again: stopping once epoch {self.saving_epoch} is saved (the save is not cut short)")
            else:
                self.event.set()
                announce(f"{name} received: stopping once epoch {self.saving_epoch} is saved")
            return
        if self.event.is_set():
            announce(f"{name} received again: stopping now; {self._kept()}")
            raise KeyboardInterrupt
        self.event.set()
        self.discard_unsaved = True
        announce(f"{name} received: stopping at the next batch; {self._kept()} (press Ctrl-C again to stop at once)")

    @contextmanager
    def saving(self, epoch: int) -> Iterator[None]:
        """Write the files of ``epoch`` inside this: no signal interrupts it; a second signal received
        meanwhile raises KeyboardInterrupt once they are written. Raises Interrupted instead, writing
        nothing, when a signal came before (its message promised the run the previous epoch)."""
        self.saving_epoch = epoch
        try:
            if self.discard_unsaved and epoch > self.saved_epoch:
                raise Interrupted
            yield
            self.saved_epoch = epoch
        finally:
            self.saving_epoch = None
        if self.stop_after_save:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
