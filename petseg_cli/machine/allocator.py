"""Keeping freed memory for the next training step instead of giving it back to the system.

A training step allocates and frees the same large activation buffers every time. glibc's malloc serves
each buffer over its mmap threshold with a fresh mmap and unmaps it on free, so every step faults all
those pages in again (and the kernel zeroes them): on a CPU that costs a large share of the step.
The same holds for a service computing batch after batch. Two remedies, the first that applies wins:

- tcmalloc (Debian/Ubuntu: ``apt-get install libtcmalloc-minimal4``), which keeps freed pages:
  ``petseg train`` and ``petseg serve`` re-execute themselves once with it in ``LD_PRELOAD`` when the
  library is installed
  (from ``cli.main``, so an app invoked inside another process, a test's, is never replaced);
- otherwise glibc is told to serve large blocks from its heap and not to trim it (``mallopt``).

``PETSEG_ALLOCATOR=system`` turns both off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

ENV_CHOICE = "PETSEG_ALLOCATOR"  # "system": leave malloc alone
SYSTEM = "system"
ENV_REEXECUTED = "PETSEG_ALLOCATOR_REEXECUTED"  # set in the re-executed process: never twice
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64", "/lib")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2**31 - 1  # bytes of free heap top kept before trimming: effectively never

_tuned = False


def find_tcmalloc(directories: tuple[str, ...] = LIBRARY_DIRS) -> Path | None:
    for directory in directories:
        for name in TCMALLOC_NAMES:
            if (Path(directory) / name).is_file():
                return Path(directory) / name
    return None


def tcmalloc_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    try:
        return "libtcmalloc" in maps.read_text(errors="replace")
    except OSError:
        return False


def preload_environment(environ: dict[str, str], library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with so that ``library`` is preloaded, or None when there is
    nothing to do: no library, turned off, already preloaded, or already re-executed once."""
    preload = environ.get("LD_PRELOAD", "")
    if (
        library is None
        or environ.get(ENV_CHOICE) == SYSTEM
        or environ.get(ENV_REEXECUTED)
        or "tcmalloc" in preload
    ):
        return None
    return {**environ, "LD_PRELOAD": f"{library} {preload}".strip(), ENV_REEXECUTED: "1"}


def reexecute_with_tcmalloc() -> None:
    """Replace this process by itself with tcmalloc preloaded (same pid, arguments and environment
    otherwise); returns without doing anything where that does not apply."""
    if not sys.platform.startswith("linux"):
        return
    environment = preload_environment(dict(os.environ), find_tcmalloc())
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environment)


def without_preloaded_tcmalloc(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with so that the tcmalloc petseg preloaded is not, or None when
    petseg did not preload it (``ENV_REEXECUTED`` stays set: it is never preloaded again)."""
    preload = environ.get("LD_PRELOAD", "").split()
    if not environ.get(ENV_REEXECUTED) or not any("tcmalloc" in entry for entry in preload):
        return None
    return {**environ, "LD_PRELOAD": " ".join(entry for entry in preload if "tcmalloc" not in entry)}


def leave_tcmalloc(why: str) -> None:
    """Replace this process by itself without the tcmalloc petseg preloaded (a library that cannot live
    with it, ``why``); a PetsegError when it was preloaded by someone else."""
    if not tcmalloc_loaded():
        return
    environment = without_preloaded_tcmalloc(dict(os.environ))
    if environment is None:
        from ..base.errors import PetsegError

        raise PetsegError(f"{why}, and tcmalloc is preloaded (LD_PRELOAD): unset it, or use --runtime onnxruntime")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environment)


def keep_freed_memory() -> None:
    """Tune glibc's malloc to keep freed blocks (once per process; not needed under tcmalloc)."""
    global _tuned
    if _tuned or os.environ.get(ENV_CHOICE) == SYSTEM or tcmalloc_loaded() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, …)
        return
    _tuned = bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def describe() -> str:
    if tcmalloc_loaded():
        return "tcmalloc"
    return "glibc (kept freed memory)" if _tuned else "glibc"
