"""``precision = "auto"`` decided by measurement, as cuDNN's benchmark mode decides convolutions: training
steps of the run's own model at its own size, timed in each candidate (fp32 in NCHW, bf16 in NHWC), and
the faster one kept. No CPU flag says which is faster: bf16 without matrix units was slower than fp32 on
one CPU and twice as fast on another.

How it measures, so that a busy moment does not decide:

- each candidate first runs WARMUP_STEPS steps that are not timed (oneDNN builds its kernels on the
  first calls of each shape);
- then ROUNDS rounds alternate the candidates (fp32, bf16, fp32, bf16, …), a step each, at the run's
  batch size or MAX_BATCH, whichever is smaller; the medians are compared;
- a candidate wins only when it is ahead by MARGIN in every round. Otherwise the hardware's rule
  decides (``unclear_default``: bf16 where it is native, else fp32), and the verdict says so;
- the load it was measured under is recorded: the other processes' share of the cores during the
  rounds (from /proc/stat, else the load average). A verdict measured on a busy machine is used for that
  run only; an idle one is cached per machine (CPU model and flags, or GPU name), torch version, model,
  size and batch, in petseg's cache directory. ``remeasure`` measures again;
- a run with a time budget measures within BUDGET_SHARE of it: when the steps so far say that the rest
  would not fit (a busy machine, a large size), it stops, takes the hardware's rule and says so (nothing
  is cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .precision import AUTO, BF16, FP16, FP32, Precision, bf16_support, choose_precision

if TYPE_CHECKING:
    import torch

    from ..config.settings import Settings
    from .distributed import Context

MAX_BATCH = 8  # images per timed step at most (the run's batch when smaller)
WARMUP_STEPS = 1  # per candidate, not timed (it builds the kernels of the shape)
ROUNDS = 3  # alternated rounds of one timed step per candidate
MARGIN = 1.10  # a candidate wins only when at least 10% faster in every round
BUSY_SHARE = 0.25  # other processes using more than this share of the cores: the machine is busy
BUDGET_SHARE = 0.1  # the most of a run's time budget the measurement may take
CACHE_FILE = "precision-probe.json"
CACHE_VERSION = 2  # verdicts cached by an earlier way of measuring are measured again


@dataclass(frozen=True)
class Load:
    """What else ran while the probe measured: the other processes' CPU as a share of all cores."""

    others: float
    cores: int

    @property
    def busy(self) -> bool:
        return self.others > BUSY_SHARE

    def describe(self) -> str:
        return f"{'busy' if self.busy else 'idle'}: other processes used {self.others:.0%} of {self.cores} cores"


@dataclass(frozen=True)
class Verdict:
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per timed step, per candidate
    rounds: list[dict[str, float]] = field(default_factory=list)  # each round's seconds, per candidate
    batch: int = 0
    rule: str = ""  # why, when the measurement did not decide: the hardware's rule, or a single candidate
    load: Load | None = None
    measured_at: str = ""
    cached: bool = False

    @property
    def decided_by_measurement(self) -> bool:
        return bool(self.seconds) and not self.rule

    def describe(self) -> str:
        """One line: the precision, why, and how it was measured (and that it came from the cache)."""
        if not self.seconds:
            return f"{self.precision} ({self.rule})"
        timings = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in self.seconds.items())
        why = f"; {self.rule}" if self.rule else ""
        where = f"; cached, measured {self.measured_at}" if self.cached else ""
        load = f"; {self.load.describe()}" if self.load else ""
        return f"{self.precision} (median of {len(self.rounds)} rounds: {timings} per step of {self.batch} images{why}{load}{where})"


def machine_key(device: "torch.device", model: str, size: int, batch: int) -> str:
    import torch

    from .precision import read_cpu_flags

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "cpu")
        hardware = name + " " + hashlib.sha1(" ".join(sorted(read_cpu_flags())).encode()).hexdigest()[:12]
    return f"{hardware} | torch {torch.__version__} | {model} | {size}px | batch {batch}"


def probe_batch(batch_size: int) -> int:
    return max(1, min(batch_size, MAX_BATCH))


def candidates(device: "torch.device", native_bf16: bool) -> list[str]:
    """What may win: fp32 always; bf16 where the hardware has it (emulated bf16 never wins); on a GPU
    without bf16, fp16."""
    if native_bf16:
        return [FP32, BF16]
    return [FP32, FP16] if device.type == "cuda" else [FP32]


def unclear_default(device_type: str, native_bf16: bool) -> str:
    """The precision auto takes when no candidate was ahead in every round: the reduced precision the
    hardware computes natively (bf16, or fp16 on a GPU without bf16), else fp32. Where bf16 is native it
    ran at about twice fp32's pace at 256 px for both models on the CPUs measured so far, with or without
    matrix units; where the two are close, either costs little."""
    return choose_precision(AUTO, device_type, fast_bf16=native_bf16)


def faster_precision(rounds: list[dict[str, float]]) -> str | None:
    """The candidate ahead of every other by MARGIN in every round; None when no candidate is."""
    names = list(rounds[0])
    for name in names:
        if all(r[other] > r[name] * MARGIN for r in rounds for other in names if other != name):
            return name
    return None


class Stepper:
    """Training steps of one candidate: its own copy of the model, in its memory format and autocast."""

    def __init__(self, build: Callable[[], "torch.nn.Module"], loss_fn: Callable, size: int, batch: int,
                 precision: str, device: "torch.device") -> None:
        import torch

        from .precision import Precision

        memory_format = torch.contiguous_format if precision == FP32 else torch.channels_last
        self.model = build().to(device, memory_format=memory_format).train()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(batch, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        self.masks = torch.randint(0, 2, (batch, size, size), generator=generator).to(device)
        self.autocast = Precision(precision, device.type, native_bf16=True).autocast()
        self.loss_fn, self.device = loss_fn, device

    def step(self) -> float:
        import torch

        started = time.perf_counter()
        with self.autocast:
            loss = self.loss_fn(self.model(self.images), self.masks)
        loss.backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.model.zero_grad(set_to_none=True)
        return seconds


def time_rounds(steppers: dict[str, Stepper], most_seconds: float | None = None) -> list[dict[str, float]] | None:
    """Warm every candidate up, then ROUNDS rounds of one timed step each, alternated; None as soon as the
    steps so far say that all of them would take more than ``most_seconds``."""
    plan = [(name, False) for name in steppers for _ in range(WARMUP_STEPS)]
    plan += [(name, True) for _ in range(ROUNDS) for name in steppers]
    rounds: list[dict[str, float]] = [{} for _ in range(ROUNDS)]
    spent = 0.0
    for done, (name, timed) in enumerate(plan, start=1):
        seconds = steppers[name].step()
        spent += seconds
        if timed:
            next(r for r in rounds if name not in r)[name] = round(seconds, 4)
        if most_seconds is not None and spent + spent / done * (len(plan) - done) > most_seconds:
            return None
    return rounds


class LoadMeter:
    """The other processes' share of the cores between ``__init__`` and ``load()``: all CPU time the
    kernel counts as busy (steal included: another machine's work on these cores) less this process's.
    Its clocks are arguments, so that a test can drive it."""

    def __init__(
        self, busy_seconds: Callable[[], float | None] = lambda: busy_cpu_seconds(),
        own_seconds: Callable[[], float] = time.process_time, timer: Callable[[], float] = time.monotonic,
        cores: int | None = None,
    ) -> None:
        self.busy_seconds, self.own_seconds, self.timer = busy_seconds, own_seconds, timer
        self.cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        self.wall, self.mine, self.busy = timer(), own_seconds(), busy_seconds()

    def load(self) -> Load:
        wall, mine, busy = self.timer() - self.wall, self.own_seconds() - self.mine, self.busy_seconds()
        if busy is None or self.busy is None or wall <= 0:  # no /proc/stat: the load average, less this process
            others = max(os.getloadavg()[0] - 1.0, 0.0) / self.cores if hasattr(os, "getloadavg") else 0.0
        else:
            others = max(busy - self.busy - mine, 0.0) / (wall * self.cores)
        return Load(round(others, 3), self.cores)


def busy_cpu_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds every core has been busy since boot (user, nice, system, irq, softirq, steal); None where unknown."""
    try:
        fields = stat.read_text(encoding="ascii").splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure_precision(
    build: Callable[[], "torch.nn.Module"], loss_fn: Callable, size: int, batch: int, device: "torch.device",
    native_bf16: bool, key: str, cache_dir: Path | None, remeasure: bool = False,
    meter: Callable[[], LoadMeter] = LoadMeter, most_seconds: float | None = None,
) -> Verdict:
    """The faster precision for this model, size and batch here: from the cache (unless ``remeasure``),
    else measured (under ``meter``, which says how busy the machine was) within ``most_seconds``; cached
    when measured idle."""
    options = candidates(device, native_bf16)
    if len(options) == 1:
        return Verdict(options[0], rule=f"auto: no native bf16 on this {device.type.upper()}: {options[0]} without measuring")
    cache = read_cache(cache_dir)
    if key in cache and not remeasure:
        return cached_verdict(cache[key])
    load_meter = meter()
    rounds = time_rounds({name: Stepper(build, loss_fn, size, batch, name, device) for name in options}, most_seconds)
    load = load_meter.load()
    if rounds is None:
        default = unclear_default(device.type, native_bf16)
        return Verdict(default, batch=batch, load=load, rule=(
            f"not measured: its steps would take more than the {most_seconds:.0f} s it may use of the time budget "
            f"({load.describe()}); {default}, the default for this {device.type.upper()}"))
    winner = faster_precision(rounds)
    rule = ""
    if winner is None:
        winner = unclear_default(device.type, native_bf16)
        rule = f"no candidate {MARGIN - 1:.0%} ahead in every round: {winner}, the default for this {device.type.upper()}"
    medians = {name: round(statistics.median(r[name] for r in rounds), 4) for name in options}
    verdict = Verdict(winner, medians, rounds, batch, rule, load, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not load.busy:
        write_cache(cache_dir, {**cache, key: {**asdict(verdict), "cached": True}})
    return verdict


def decide_precision(
    settings: Settings, device: "torch.device", dist: Context, remeasure: bool = False, kept: str | None = None
) -> tuple[Precision, Verdict | None]:
    """``--precision`` as given, or for auto the faster precision as measured on this machine for the
    settings' model, size and batch (cached; the first process measures, the others are told). A
    resumed run passes the precision it trained in as ``kept``: auto keeps it where it can run (a run
    trains in one precision, so that it resumes exactly), unless ``remeasure``."""
    from ..base.formatting import parse_duration
    from ..data.cache import user_cache_dir
    from ..models.losses import build_loss
    from ..models import build_model

    t, m, size = settings.train, settings.model, settings.data.image_size
    if t.precision != AUTO:
        return Precision.resolve(t.precision, device), None
    native, fast = bf16_support(device)
    if kept in candidates(device, native) and not remeasure:
        verdict = Verdict(kept, rule="auto: kept the precision the run trained in before this resume")
        return Precision(kept, device.type, native, fast), verdict
    verdict = None
    if dist.is_main:
        batch = probe_batch(dist.per_rank_batch(t.batch_size))
        budget = parse_duration(t.time)
        verdict = measure_precision(
            lambda: build_model(m.name, cbam=m.cbam), build_loss(t), size, batch, device, native,
            machine_key(device, m.name, size, batch), user_cache_dir(), remeasure,
            most_seconds=BUDGET_SHARE * budget if budget else None,
        )
    verdict = dist.broadcast_object(verdict)
    return Precision(verdict.precision, device.type, native, fast), verdict


def cached_verdict(entry: dict) -> Verdict:
    load = entry.get("load")
    return Verdict(**{**entry, "load": Load(**load) if load else None, "cached": True})


def read_cache(cache_dir: Path | None, name: str = CACHE_FILE, version: int = CACHE_VERSION,
               valid: Callable[[dict], bool] = lambda entry: valid_entry(entry)) -> dict:
    """The cached verdicts (of this ``version``) by key; {} when there are none or the file is unreadable.
    ``name``, ``version`` and ``valid``: another probe's cache (``runtime_probe``)."""
    try:
        data = json.loads((cache_dir / name).read_text()) if cache_dir else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version or not isinstance(data.get("verdicts"), dict):
        return {}
    return {key: entry for key, entry in data["verdicts"].items() if isinstance(entry, dict) and valid(entry)}


def valid_entry(entry: dict) -> bool:
    try:
        cached_verdict(entry)
    except (TypeError, ValueError):
        return False
    return isinstance(entry.get("precision"), str)


def write_cache(cache_dir: Path | None, verdicts: dict, name: str = CACHE_FILE, version: int = CACHE_VERSION) -> None:
    if cache_dir is None:
        return
    from ..base.files import write_json_atomic

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_dir / name, {"version": version, "verdicts": verdicts})
    except OSError:
        pass  # an unwritable cache only costs the measurement next time


def cache_path(cache_dir: Path) -> Path:
    return cache_dir / CACHE_FILE
