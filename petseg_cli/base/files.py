"""Writing files so that a crash never leaves half of one: a temporary file beside the target, fsync,
rename. Every file petseg writes (run files, evaluations, masks, downloads) goes through here."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar

T = TypeVar("T")

# Modes given when a file or directory is created: the kernel takes the process's umask off them, as it
# does for open(), so nothing ever reads or changes the umask (setting it, even for a moment, would let
# another thread create a file with the wrong mode).
NEW_FILE_MODE = 0o666
NEW_DIRECTORY_MODE = 0o777
TEMPORARY_SUFFIX = ".tmp"
NAME_ATTEMPTS = 100


def create_beside(path: Path, create: Callable[[Path], T]) -> tuple[Path, T]:
    """``create(temporary)`` for a new hidden name beside ``path`` (``.NAME.XXXXXXXX.tmp``), trying
    another name while one exists: the temporary's path and what ``create`` returned."""
    for _ in range(NAME_ATTEMPTS):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            return temporary, create(temporary)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def new_file(temporary: Path) -> int:
    return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), NEW_FILE_MODE)


def new_directory_beside(path: Path) -> Path:
    """A new directory beside ``path`` (a hidden temporary name), with the mode ``mkdir`` gives."""
    return create_beside(path, lambda temporary: os.mkdir(temporary, NEW_DIRECTORY_MODE))[0]


def remove_temporary_files(run_dir: Path) -> None:
    """Delete what a killed process left half-written in ``run_dir`` (never a finished file)."""
    for leftover in run_dir.glob(f".*{TEMPORARY_SUFFIX}"):
        leftover.unlink(missing_ok=True)


@contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    tmp, fd = create_beside(path, new_file)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def sha256(path: Path) -> str:
    """The file's SHA-256, hex (read a MiB at a time)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_failure(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be written, naming a file that stands where a directory should be."""
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        return f"{path}: cannot write: {blocking} is a file, not a directory"
    return f"{path}: cannot write ({exc.strerror or exc})"
