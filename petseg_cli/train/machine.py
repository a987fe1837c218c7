"""How this process computes: device, processes, precision, memory format and loader workers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..console import warn
from ..machine import allocator
from ..machine.devices import choose_workers, usable_cores
from ..machine.distributed import Context
from ..machine.precision import AUTO, Precision, bf16_support, choose_channels_last
from ..settings import Settings


@dataclass(frozen=True)
class Machine:
    device: torch.device
    dist: Context
    precision: Precision
    channels_last: bool
    workers: int
    measured: dict[str, float] | None = None  # precision auto's timed steps (seconds per step), when it measured

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def prepare_machine(settings: Settings, device: torch.device, dist: Context) -> Machine:
    """Resolve the machine-dependent settings, and set the process-wide state that goes with them
    (allocator behaviour, cuDNN autotuning)."""
    t = settings.train
    allocator.keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: find the fastest convolutions once
    precision, measured = choose_precision(settings, device, dist)
    if precision.emulated:
        warn(f"bf16 is emulated on this {device.type.upper()} (no native bf16): expect it slower than fp32")
    return Machine(
        device=device,
        dist=dist,
        precision=precision,
        channels_last=choose_channels_last(t.channels_last, device.type, precision.name),
        workers=choose_workers(t.workers, usable_cores(), device.type, dist.local_world_size),
        measured=measured,
    )


def choose_precision(settings: Settings, device: torch.device, dist: Context) -> tuple[Precision, dict[str, float] | None]:
    """``--precision`` as given, or for auto the faster precision as measured on this machine for this
    model and size (machine/probe.py: cached; the first process measures, the others are told)."""
    from ..data.cache import user_cache_dir
    from ..losses import build_loss
    from ..machine.probe import machine_key, measure_precision
    from ..models import build_model

    t, m, size = settings.train, settings.model, settings.data.image_size
    if t.precision != AUTO:
        return Precision.resolve(t.precision, device), None
    native, fast = bf16_support(device)
    verdict = None
    if dist.is_main:
        verdict = measure_precision(
            lambda: build_model(m.name, cbam=m.cbam), build_loss(t.loss), size, device, native,
            machine_key(device, m.name, size), user_cache_dir(),
        )
    verdict = dist.broadcast_object(verdict)
    return Precision(verdict.precision, device.type, native, fast), verdict.seconds or None
