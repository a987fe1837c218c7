"""Whether a run trains a ``torch.compile``d model: ``--compile/--no-compile``, or "auto" decided from
the machine's facts; and where inductor keeps what it compiled, so that the next run starts in seconds.

Auto compiles where compiled kernels beat eager ones and the run is long enough to repay the
compilation (a minute or more for a model's training and validation graphs, less once cached):

- CUDA GPUs;
- CPUs that compute bf16 natively, training in bf16 (inductor fuses the element-wise work around
  oneDNN's convolutions, which is where a bf16 step spends much of its time);
- not fp32 on a CPU: there compiled steps were not faster than eager ones;
- not with emulated bf16, nor on a CPU without a C++ compiler (inductor writes C++ for CPUs).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, MutableMapping

from ..base.errors import UsageError

AUTO = "auto"
# The fewest training steps a run must plan for auto to compile. An estimate: a cold compilation costs
# as much time as a few hundred eager steps, and a compiled step saves a fraction of one.
MIN_STEPS = 500
# A run with a time budget compiles beside its steps (train/background_compile.py), which wait for the
# compilations at most this share of the budget in all: compiled steps are faster by a fraction of an
# eager step, so a longer wait costs more of the budget than they win back.
BACKGROUND_WAIT_SHARE = 0.2
COMPILE_THREAD = "petseg-compile"  # the name of that thread
CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
CXX_CANDIDATES = ("c++", "g++", "clang++")


@dataclass(frozen=True)
class CompileDecision:
    enabled: bool
    reason: str  # one line, recorded in config.toml's [run] as compile_reason


def has_cxx_compiler(environ: Mapping[str, str] | None = None) -> bool:
    """Whether inductor can build CPU kernels here (it honours $CXX, else looks for a C++ compiler)."""
    environ = os.environ if environ is None else environ
    candidates = [environ["CXX"]] if environ.get("CXX") else list(CXX_CANDIDATES)
    return any(shutil.which(c) for c in candidates)


def decide_compile(
    requested: bool | str,
    device_type: str,
    precision: str,
    fast_bf16: bool,
    steps: int,
    cxx_compiler: bool = True,
) -> CompileDecision:
    """Compile or not, and why, from the facts of this run: ``requested`` (true, false or "auto"), the
    device type ("cpu", "cuda" ...), the precision it trains in, whether bf16 outruns fp32 on the device,
    the number of training steps planned, and whether a C++ compiler is present (CPUs only)."""
    cpu = device_type == "cpu"
    if requested is True:
        if cpu and not cxx_compiler:
            raise UsageError("--compile on a CPU needs a C++ compiler (g++ or clang++, or $CXX); none was found")
        return CompileDecision(True, "asked for (--compile or compile = true)")
    if requested is False:
        return CompileDecision(False, "turned off (--no-compile or compile = false)")
    if requested != AUTO:
        raise UsageError(f'train.compile must be true, false or "auto", got {requested!r}')
    if device_type not in ("cpu", "cuda"):
        return CompileDecision(False, f"auto: not measured on {device_type}")
    if cpu:
        if precision != "bf16":
            return CompileDecision(False, f"auto: {precision} on a CPU, where compiled steps were not faster")
        if not fast_bf16:
            return CompileDecision(False, "auto: this CPU has no bf16 matrix units (AMX), where compiled steps were not faster")
        if not cxx_compiler:
            return CompileDecision(False, "auto: no C++ compiler for inductor's CPU kernels")
    where = "a CUDA GPU" if not cpu else "a CPU with bf16 matrix units"
    if steps < MIN_STEPS:
        return CompileDecision(False, f"auto: {steps} training steps planned, fewer than the {MIN_STEPS} that repay compiling")
    return CompileDecision(True, f"auto: {where}, {steps} training steps planned (at least {MIN_STEPS} repay compiling)")


def planned_steps(epochs_left: int, steps_per_epoch: int) -> int:
    return max(epochs_left, 0) * steps_per_epoch


def use_petseg_cache(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Point inductor's on-disk cache at ``<petseg's cache>/inductor`` unless the user chose another
    (``$TORCHINDUCTOR_CACHE_DIR``); returns the directory in use, or None where it cannot be created
    (inductor then uses its own default).

    Call it before torch._dynamo is imported: that import fills the variable in with torch's default
    (a directory under /tmp). A value equal to that default is taken as torch's, not the user's, choice."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from ..data.cache import user_cache_dir

    environ = os.environ if environ is None else environ
    chosen = environ.get(CACHE_VARIABLE)
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    directory = user_cache_dir() / "inductor"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    environ[CACHE_VARIABLE] = str(directory)
    return directory


@contextmanager
def announce_compilation(what: str, say: Callable[[str], None], synchronize: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Around a compiled model's first call: a line before (it can take minutes) and one with the time it took."""
    say(f"compiling the {what} (first call; cached for later runs) …")
    started = time.perf_counter()
    yield
    synchronize()
    say(f"compiled the {what} in {time.perf_counter() - started:.1f} s")


def leave_now_if_compiling(code: int | str | None) -> None:
    """End the process at once with exit status ``code`` (SystemExit's) while a background compilation is
    still running, after flushing stdout and stderr: the interpreter's shutdown would stop that thread
    inside torch's C++ code, which aborts the process. Otherwise return."""
    if not any(thread.name == COMPILE_THREAD and thread.is_alive() for thread in threading.enumerate()):
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
