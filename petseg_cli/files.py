"""Writing files so that a crash never leaves half of one: a temporary file beside the target, fsync,
rename. Every file petseg writes (run files, evaluations, masks, downloads) goes through here."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

NEW_FILE_MODE = 0o666


@functools.cache
def umask() -> int:
    """The process's umask (read once: reading it means setting it for a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Fault-injection tests set this to hold a temporary file open for N seconds before its rename, so that
# a kill lands reproducibly while a checkpoint is being written: every file, or only those named (comma-
# separated) in SLOW_SAVE_FILES_VARIABLE.
SLOW_SAVE_VARIABLE = "PETSEG_SLOW_SAVE_SECONDS"
SLOW_SAVE_FILES_VARIABLE = "PETSEG_SLOW_SAVE_FILES"
TEMPORARY_SUFFIX = ".tmp"


def _slow_down_for_tests(path: Path) -> None:
    seconds = os.environ.get(SLOW_SAVE_VARIABLE)
    names = os.environ.get(SLOW_SAVE_FILES_VARIABLE)
    if seconds and (not names or path.name in names.split(",")):
        import time

        time.sleep(float(seconds))


def remove_temporary_files(run_dir: Path) -> None:
    """Delete what a killed process left half-written in ``run_dir`` (never a finished file)."""
    for leftover in run_dir.glob(f".*{TEMPORARY_SUFFIX}"):
        leftover.unlink(missing_ok=True)


@contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), NEW_FILE_MODE & ~umask())  # mkstemp's 0600 -> what open() would give
            yield f
            f.flush()
            os.fsync(f.fileno())
        _slow_down_for_tests(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_failure(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be written, naming a file that stands where a directory should be."""
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        return f"{path}: cannot write: {blocking} is a file, not a directory"
    return f"{path}: cannot write ({exc.strerror or exc})"
