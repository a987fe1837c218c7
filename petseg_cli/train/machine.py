"""How this process computes: device, processes, precision, memory format and loader workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..base.console import warn
from ..machine import allocator
from ..machine.devices import choose_workers, usable_cores
from ..machine.distributed import Context
from ..machine.precision import choose_channels_last
from ..machine.probe import decide_precision
from ..config.settings import Settings

if TYPE_CHECKING:
    from ..machine.precision import Precision
    from ..machine.probe import Verdict


@dataclass(frozen=True)
class Machine:
    device: torch.device
    dist: Context
    precision: Precision
    channels_last: bool
    workers: int
    verdict: Verdict | None = None  # precision auto's: what it measured and why it chose (machine/probe.py)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def prepare_machine(
    settings: Settings, device: torch.device, dist: Context, remeasure: bool = False, kept_precision: str | None = None
) -> Machine:
    """Resolve the machine-dependent settings, and set the process-wide state that goes with them
    (allocator behaviour, cuDNN autotuning); ``remeasure``: precision auto measures again, cache or not;
    ``kept_precision``: what a resumed run trained in (auto keeps it)."""
    t = settings.train
    allocator.keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: find the fastest convolutions once
    precision, verdict = decide_precision(settings, device, dist, remeasure, kept_precision)
    if precision.emulated:
        warn(f"bf16 is emulated on this {device.type.upper()} (no native bf16): expect it slower than fp32")
    return Machine(
        device=device,
        dist=dist,
        precision=precision,
        channels_last=choose_channels_last(t.channels_last, device.type, precision.name),
        workers=choose_workers(t.workers, usable_cores(), device.type, dist.local_world_size),
        verdict=verdict,
    )
