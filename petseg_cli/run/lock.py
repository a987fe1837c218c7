"""The training lock: an OS file lock on a run directory, held while a process trains it, so that a second
training of the same run (a re-queued job while the first is alive) fails at once instead of writing the
same files. The OS releases it when the holder dies, however it dies, so a restarted job can take it.
Beside it, who holds it (PID, host, since when), for the line the second process fails with.

It is ``flock`` itself rather than the filelock package: a forked child (a DataLoader worker) shares the
locked descriptor, and would keep the lock alive after its trainer was killed; here children close it at
fork (``os.register_at_fork``), so the lock lives exactly as long as the process that took it."""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from ..base.errors import PetsegError
from ..base.files import write_json_atomic
from .layout import LOCK, LOCK_HOLDER, read_json


class RunBusyError(PetsegError):
    """Another process trains the run."""


def holder_text(run_dir: Path) -> str:
    """``process 1234 on host node7 (since 2026-12-06T19:58:00+00:00)``, or what can be said without it."""
    try:
        holder = read_json(run_dir / LOCK_HOLDER)
        return f"process {int(holder['pid'])} on host {holder['host']} (since {holder['since']})"
    except (OSError, PetsegError, KeyError, TypeError, ValueError):
        return "another process (which has not recorded its PID and host yet)"


def busy_error(run_dir: Path) -> RunBusyError:
    return RunBusyError(f"{run_dir} is being trained by {holder_text(run_dir)}; wait for it to finish or stop it")


def check_not_training(run_dir: Path) -> None:
    """Fail at once, naming the holder, when a process trains ``run_dir`` now: what ``petseg train --resume``
    asks before it imports torch, seconds before it could take the lock. A shared lock for an instant: it
    conflicts with a trainer's, not with other checks (the processes of one torchrun job check together)."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # never trained here (or not a run: the caller says so)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise busy_error(run_dir) from None
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a lock released is removed, then let go)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


_HELD: set[int] = set()  # the descriptors of the locks this process holds


def _close_held_in_child() -> None:
    for fd in _HELD:
        os.close(fd)  # the child's copy only: the parent's lock stays
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class TrainingLock:
    """``with TrainingLock(run_dir):`` trains the run alone, or raises RunBusyError naming the holder.
    ``enabled=False``: a lock that takes nothing (the processes of a distributed run but the first)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> "TrainingLock":
        if not self.enabled or self._fd is not None:
            return self
        path = self.run_dir / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise busy_error(self.run_dir) from None
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file its holder removed as it let go: lock the one there now
        self._fd = fd
        _HELD.add(fd)
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(self.run_dir / LOCK_HOLDER, {"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        return self

    def release(self) -> None:
        """Let go of the run, leaving no file of the lock behind (a run directory holds only its own files)."""
        if self._fd is None:
            return
        (self.run_dir / LOCK_HOLDER).unlink(missing_ok=True)
        (self.run_dir / LOCK).unlink(missing_ok=True)  # still held: who opens it now finds it gone (_same_file)
        _HELD.discard(self._fd)
        os.close(self._fd)  # closing the last descriptor of the lock releases it
        self._fd = None

    def __enter__(self) -> "TrainingLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
