"""``precision = "auto"`` decided by measurement, as cuDNN's benchmark mode decides convolutions: a few
training steps of the run's own model at its own size, timed in each candidate (fp32 in NCHW, bf16 in
NHWC), and the faster one kept. No CPU flag says which is faster: bf16 without matrix units was slower
than fp32 on one CPU and twice as fast on another.

The verdict is cached per machine (CPU model and flags, or GPU name), torch version, model and size, in
petseg's cache directory, so a run pays for the measurement once; config.toml's [run] records it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .precision import BF16, FP16, FP32

if TYPE_CHECKING:
    import torch

PROBE_BATCH = 2  # images per timed step: the ratio between precisions, not the throughput, is wanted
TIMED_STEPS = 2  # after one warm-up step each; the fastest is kept
CACHE_FILE = "precision-probe.json"
MARGIN = 1.05  # bf16 is kept only when at least 5% faster: a tie is fp32's (simpler, exact)


@dataclass(frozen=True)
class Verdict:
    precision: str
    seconds: dict[str, float]  # per timed step of PROBE_BATCH images, for each candidate
    cached: bool = False

    def describe(self) -> str:
        timings = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in self.seconds.items())
        return f"{self.precision} (measured: {timings} per step of {PROBE_BATCH} images{'; cached' if self.cached else ''})"


def machine_key(device: "torch.device", model: str, size: int) -> str:
    import torch

    from .precision import read_cpu_flags

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "cpu")
        hardware = name + " " + hashlib.sha1(" ".join(sorted(read_cpu_flags())).encode()).hexdigest()[:12]
    return f"{hardware} | torch {torch.__version__} | {model} | {size}px"


def time_steps(model: "torch.nn.Module", loss_fn: Callable, size: int, precision: str, device: "torch.device") -> float:
    """The fastest of TIMED_STEPS forward+backward steps (after a warm-up) in ``precision``."""
    import torch

    from .precision import Precision

    memory_format = torch.contiguous_format if precision == FP32 else torch.channels_last
    model = model.to(device, memory_format=memory_format).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(PROBE_BATCH, 3, size, size, generator=generator).to(device, memory_format=memory_format)
    masks = torch.randint(0, 2, (PROBE_BATCH, size, size), generator=generator).to(device)
    autocast = Precision(precision, device.type, native_bf16=True).autocast()
    best = float("inf")
    for step in range(TIMED_STEPS + 1):
        started = time.perf_counter()
        with autocast:
            loss = loss_fn(model(images), masks)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            best = min(best, time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    return best


def candidates(device: "torch.device", native_bf16: bool) -> list[str]:
    """What may win: fp32 always; bf16 where the hardware has it (emulated bf16 never wins); on a GPU
    without bf16, fp16."""
    if native_bf16:
        return [FP32, BF16]
    return [FP32, FP16] if device.type == "cuda" else [FP32]


def faster_precision(seconds: dict[str, float]) -> str:
    """The precision kept from the seconds a step took in each: the fastest, unless fp32 is within MARGIN."""
    fastest = min(seconds, key=lambda name: seconds[name])
    return fastest if seconds[FP32] > seconds[fastest] * MARGIN else FP32


def measure_precision(
    build: Callable[[], "torch.nn.Module"], loss_fn: Callable, size: int, device: "torch.device",
    native_bf16: bool, key: str, cache_dir: Path | None,
) -> Verdict:
    """The faster precision for this model and size here: from the cache, else measured (and cached)."""
    options = candidates(device, native_bf16)
    if len(options) == 1:
        return Verdict(options[0], {})
    cache = _read(cache_dir)
    if key in cache:
        return Verdict(cache[key]["precision"], cache[key]["seconds"], cached=True)
    # decided from the figures it records, so that config.toml's timings always explain the choice
    seconds = {name: round(time_steps(build(), loss_fn, size, name, device), 4) for name in options}
    verdict = Verdict(faster_precision(seconds), seconds)
    _write(cache_dir, {**cache, key: {"precision": verdict.precision, "seconds": verdict.seconds}})
    return verdict


def _read(cache_dir: Path | None) -> dict:
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text()) if cache_dir else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(cache_dir: Path | None, data: dict) -> None:
    if cache_dir is None:
        return
    from ..files import write_json_atomic

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_dir / CACHE_FILE, data)
    except OSError:
        pass  # an unwritable cache only costs the measurement next time


