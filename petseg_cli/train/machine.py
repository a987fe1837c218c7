"""How this process computes: device, processes, precision, memory format and loader workers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..console import warn
from ..machine import allocator
from ..machine.devices import choose_workers, usable_cores
from ..machine.distributed import Context
from ..machine.precision import Precision, choose_channels_last
from ..settings import Settings


@dataclass(frozen=True)
class Machine:
    device: torch.device
    dist: Context
    precision: Precision
    channels_last: bool
    workers: int

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
    precision = Precision.resolve(t.precision, device)
    if precision.emulated:
        warn(f"bf16 is emulated on this {device.type.upper()} (no native bf16): expect it slower than fp32")
    elif precision.name == "bf16" and not precision.fast_bf16:
        warn(f"this {device.type.upper()} has bf16 instructions but no bf16 matrix units (AMX): expect bf16 no faster than fp32")
    return Machine(
        device=device,
        dist=dist,
        precision=precision,
        channels_last=choose_channels_last(t.channels_last, device.type, precision.name),
        workers=choose_workers(t.workers, usable_cores(), device.type, dist.local_world_size),
    )
