"""``petseg machine``: what each "auto" setting of ``petseg train`` decides on this machine, and why:
precision (measured, as training measures it, or from the cache), compile, threads, loader workers
and the allocator. The record it returns is rendered by the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import UsageError
from ..config.settings import Settings


@dataclass(frozen=True)
class ModelDecision:
    model: str
    image_size: int
    precision: str
    how: str  # the verdict's line: its medians, load, rule and whether it was cached
    seconds: dict[str, float]
    cached: bool
    compile: bool
    compile_reason: str


@dataclass
class MachineReport:
    device: str
    cpu_flags: list[str]  # the flags that decide bf16 (x86 AVX512-BF16, AMX; Arm BF16)
    threads: int
    workers: int
    allocator: str
    cache_file: Path
    decisions: list[ModelDecision] = field(default_factory=list)

    def facts(self) -> list[tuple[str, str]]:
        return [
            ("device", self.device),
            ("bf16 flags", ", ".join(self.cpu_flags) or "none"),
            ("threads", f"{self.threads} (torch's default: the usable cores)"),
            ("loader workers", f"{self.workers} (--workers -1: from the cores and the device)"),
            ("allocator", self.allocator),
            ("precision cache", str(self.cache_file)),
        ]


def machine_decisions(settings: Settings, models: list[str], sizes: list[int], remeasure: bool = False) -> MachineReport:
    """What auto decides for each of ``models`` at each of ``sizes`` (the run's batch size from ``settings``)."""
    import torch

    from ..data.cache import user_cache_dir
    from ..machine import allocator
    from ..machine.devices import choose_workers, resolve_device, usable_cores
    from ..machine.precision import CPU_BF16_FLAGS, bf16_support, read_cpu_flags
    from ..machine.probe import cache_path
    from ..models import canonical_name, check_image_size

    for size in sizes:
        check_image_size(size)
    try:
        names = [canonical_name(m) for m in models]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = resolve_device(settings.train.device)
    allocator.keep_freed_memory()  # as training does, so that the probe measures what a run would get
    report = MachineReport(
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        cpu_flags=sorted(CPU_BF16_FLAGS & read_cpu_flags()),
        threads=torch.get_num_threads(),
        workers=choose_workers(settings.train.workers, usable_cores(), device.type),
        allocator=allocator.describe(),
        cache_file=cache_path(user_cache_dir()),
    )
    native, fast = bf16_support(device)
    for name in names:
        for size in sizes:
            report.decisions.append(decide(settings, name, size, device, native, fast, remeasure))
    return report


def decide(settings: Settings, model: str, size: int, device, native: bool, fast: bool, remeasure: bool) -> ModelDecision:
    """One model at one size: precision auto's verdict, and compile auto's for a run long enough to repay it."""
    from dataclasses import replace

    from ..machine.compile import MIN_STEPS, decide_compile, has_cxx_compiler
    from ..machine.distributed import Context
    from ..machine.probe import decide_precision

    run_settings = replace(settings, model=replace(settings.model, name=model), data=replace(settings.data, image_size=size))
    precision, verdict = decide_precision(run_settings, device, Context.from_env(), remeasure)
    compiled = decide_compile(settings.train.compile, device.type, precision.name, fast, MIN_STEPS,
                              cxx_compiler=has_cxx_compiler() if device.type == "cpu" else True)
    return ModelDecision(
        model=model, image_size=size, precision=precision.name,
        how=verdict.describe() if verdict is not None else f"{precision.name} (as set: --precision {settings.train.precision})",
        seconds=verdict.seconds if verdict is not None else {}, cached=bool(verdict and verdict.cached),
        compile=compiled.enabled, compile_reason=compiled.reason,
    )
