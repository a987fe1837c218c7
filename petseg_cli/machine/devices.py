"""Choosing the torch device from ``--device auto|cpu|cuda[:N]``, and how many processes feed it."""

from __future__ import annotations

import os
import re

from ..base.errors import UsageError


def resolve_device(name: str) -> "torch.device":  # noqa: F821
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but this machine has no CUDA GPU; use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


# On a CPU the model's step takes every core; a loader worker only helps when cores are left over.
CPU_CORES_PER_WORKER = 8
MAX_WORKERS = 8


def choose_workers(requested: int, cores: int, device_type: str, processes_per_machine: int = 1) -> int:
    """DataLoader workers for ``--workers`` (-1 = auto), given the machine's cores and the processes
    sharing them (torchrun's ranks on one machine).

    On a GPU the CPU only feeds it: one core stays with each training process, the rest decode and
    augment. On a CPU, augmenting a batch costs a few percent of its step, and a worker would slow the
    step down by as much as it takes: workers only where cores are plentiful.
    """
    if requested >= 0:
        return requested
    cores_per_process = max(cores // max(processes_per_machine, 1), 1)
    if device_type == "cuda":
        return min(cores_per_process - 1, MAX_WORKERS)
    return min(cores_per_process // CPU_CORES_PER_WORKER, MAX_WORKERS)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
