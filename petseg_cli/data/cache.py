"""Decode once: a split's resized images and masks kept as memory-mapped uint8 ``.npy`` files.

    <data_dir>/.petseg-cache/<split>-<size>-<key>/images.npy   (N, S, S, 3) uint8
                                                 /masks.npy    (N, S, S) uint8
                                                 /meta.json    rows kept, files skipped (and why)

or ``$XDG_CACHE_HOME/petseg/<dataset>-<hash>/…`` (default ``~/.cache/petseg``) when the data directory
is read-only or is the demo set (installed with the package: nothing is written among its files). The key hashes the split's file list with every file's size and modification time, so a
changed, added or removed file makes a new entry (older entries of the split and size are deleted).

An entry is built in a temporary directory and renamed into place, under a lock: a second process
waits for the first and then reads its entry, a crash leaves no half-written entry, and readers never
see one. Entries are never changed once in place. A reader holds a shared lock (``.readers``) from
finding an entry to mapping its arrays; a builder deletes the split's older entries only when it can take
that lock at once (else the next build does), so no entry disappears between a reader's look and its map
(and a mapped file that is deleted stays readable for the process that maps it). The arrays are memory-mapped copy-on-write: the page cache holds them once for every process
and worker, and nothing a process does to them reaches the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .demo_set import is_demo

try:
    import fcntl
except ImportError:  # Windows: no lock; the atomic rename still keeps entries whole
    fcntl = None

FORMAT_VERSION = 1
CACHE_DIRNAME = ".petseg-cache"
LOCK_NAME = ".lock"
READERS_LOCK_NAME = ".readers"
KEY_LENGTH = 20  # hex digits of an entry's key
IMAGES, MASKS, META = "images.npy", "masks.npy", "meta.json"


@dataclass
class Skipped:
    name: str
    message: str  # why, as the warning says it


@dataclass
class Entry:
    """Arrays of the rows kept (memory-mapped), the names of those rows, and the files skipped."""

    images: np.ndarray
    masks: np.ndarray
    kept: list[str]
    skipped: list[Skipped]
    directory: Path | None = None  # None when decoded in memory
    built_here: bool = False  # decoded by this call (its warnings were given while decoding)


# Fills the arrays it is given row by row with the usable samples; returns kept names and skipped files.
Builder = Callable[[np.ndarray, np.ndarray], tuple[list[str], list[Skipped]]]


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "petseg"


def is_writable(directory: Path) -> bool:
    """Writable for this process and not marked read-only (root may write anywhere, but should not)."""
    try:
        return os.access(directory, os.W_OK) and bool(directory.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_root(data_dir: Path) -> Path:
    if is_writable(data_dir) and not is_demo(data_dir):
        return data_dir / CACHE_DIRNAME
    resolved = str(data_dir.resolve())
    return user_cache_dir() / f"{data_dir.resolve().name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def entry_key(files: list[tuple[str, list[Path]]], image_size: int) -> str:
    """A hash of the file list (each row's name and its files' sizes and mtimes) and the image size."""
    listing = [[name, [_stat(p) for p in paths]] for name, paths in files]
    text = json.dumps([FORMAT_VERSION, image_size, listing], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


@contextmanager
def _flock(path: Path, operation: int, wait: bool = True) -> Iterator[bool]:
    """Holds ``path``'s lock (``fcntl.LOCK_EX`` or ``LOCK_SH``); yields whether it got it (never without
    fcntl, or when ``wait`` is False and another process holds it)."""
    if fcntl is None:
        yield False
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, operation if wait else operation | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(root: Path) -> "contextlib.AbstractContextManager[bool]":
    """The builders' lock: one process builds at a time (without it, builders race and the last wins)."""
    return _flock(root / LOCK_NAME, fcntl.LOCK_EX if fcntl else 0)


@contextmanager
def _reading(root: Path) -> Iterator[None]:
    """Held (shared) by a reader from finding an entry to mapping its files. Once mapped, deleting the
    files cannot hurt the reader (the mapping keeps them); between the two it could, so stale entries
    are deleted only when no reader holds this. A cache this process cannot write is read unlocked."""
    lock = contextlib.nullcontext(False)
    if fcntl is not None and is_writable(root):
        lock = _flock(root / READERS_LOCK_NAME, fcntl.LOCK_SH)
    with lock:
        yield


def is_entry_of(name: str, tag: str) -> bool:
    """Whether the directory ``name`` is an entry of ``tag`` (``train-256-<key>``; not ``train-256-part40-<key>``)."""
    return re.fullmatch(re.escape(tag) + f"-[0-9a-f]{{{KEY_LENGTH}}}", name) is not None


def _delete_stale(root: Path, tag: str, keep: Path) -> None:
    """Delete ``tag``'s other entries, unless a reader is opening one now (the next build will)."""
    with _flock(root / READERS_LOCK_NAME, fcntl.LOCK_EX if fcntl else 0, wait=False) as alone:
        if not alone:
            return
        for stale in root.iterdir():
            if stale != keep and is_entry_of(stale.name, tag):
                shutil.rmtree(stale, ignore_errors=True)


def _open(directory: Path) -> Entry:
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    count = meta["count"]
    images = np.load(directory / IMAGES, mmap_mode="c")[:count]
    masks = np.load(directory / MASKS, mmap_mode="c")[:count]
    skipped = [Skipped(**s) for s in meta["skipped"]]
    return Entry(images, masks, meta["kept"], skipped, directory)


def _reserve(path: Path) -> None:
    """Allocate a new file's blocks now. A full disk then fails here with ENOSPC, where a write into a
    memory-mapped page of a sparse file would kill the process with SIGBUS."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot: write as before
                raise


def _build(directory: Path, rows: int, image_size: int, builder: Builder) -> None:
    """Decode into ``directory`` (a fresh, empty one); the arrays are written to disk as they fill."""
    images = np.lib.format.open_memmap(directory / IMAGES, "w+", np.uint8, (rows, image_size, image_size, 3))
    masks = np.lib.format.open_memmap(directory / MASKS, "w+", np.uint8, (rows, image_size, image_size))
    for name in (IMAGES, MASKS):
        _reserve(directory / name)
    kept, skipped = builder(images, masks)
    for array in (images, masks):
        array.flush()
    del images, masks
    meta = {"format": FORMAT_VERSION, "count": len(kept), "kept": kept, "skipped": [vars(s) for s in skipped]}
    (directory / META).write_text(json.dumps(meta), encoding="utf-8")
    for name in (IMAGES, MASKS, META):
        with open(directory / name, "rb") as f:
            os.fsync(f.fileno())


def load_or_build(
    root: Path, tag: str, files: list[tuple[str, list[Path]]], image_size: int, builder: Builder
) -> Entry:
    """The entry for ``files`` at ``image_size`` under ``root``, built with ``builder`` on a miss.

    ``tag`` names the entry's kind (split and size); ``files`` lists each row's name and the files it
    is decoded from.
    """
    name = f"{tag}-{entry_key(files, image_size)}"
    final = root / name
    if root.is_dir():
        with _reading(root):
            if (final / META).is_file():
                return _open(final)
    root.mkdir(parents=True, exist_ok=True)
    built = False
    with _locked(root) as exclusive:
        if not (final / META).is_file():  # nobody built it while this process waited
            if exclusive:  # any half-built entry was left by a builder that crashed
                for leftover in root.glob(f".{tag}-*.building"):
                    shutil.rmtree(leftover, ignore_errors=True)
            building = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".building", dir=root))
            try:
                _build(building, len(files), image_size, builder)
            except BaseException:  # a full disk, Ctrl-C: no half-built entry stays behind
                shutil.rmtree(building, ignore_errors=True)
                raise
            built = _install(building, final)
            if exclusive:
                _delete_stale(root, tag, final)
        with _reading(root):
            entry = _open(final)
    entry.built_here = built
    return entry


def _install(building: Path, final: Path) -> bool:
    """Rename a built entry into place; False when another process's entry got there first."""
    if not (final / META).is_file():
        shutil.rmtree(final, ignore_errors=True)  # an entry whose meta.json was deleted by hand
        try:
            os.replace(building, final)
            return True
        except OSError:  # another builder's rename came between (no lock on this system)
            pass
    shutil.rmtree(building, ignore_errors=True)
    return False
