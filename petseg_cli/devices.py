"""Choosing the torch device from ``--device auto|cpu|cuda[:N]``."""

from __future__ import annotations

import re

from .errors import UsageError


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
