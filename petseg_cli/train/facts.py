"""config.toml's [run]: what this run was, including what the "auto" settings resolved to."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..machine import allocator

if TYPE_CHECKING:
    from .machine import Machine
    from .setup import Training


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_facts(training: Training, data_dir: Path) -> dict[str, Any]:
    return {
        "petseg_version": __version__,
        "torch_version": torch.__version__,
        "device": str(training.device),
        "start_time": now(),
        "dataset_path": str(data_dir.resolve()),
        "images": {name: len(split) for name, split in training.splits.items()},
        "skipped": {name: split.skipped for name, split in training.splits.items()},
        "parameters": training.parameters,
        **speed_facts(training),
    }


def speed_facts(training: Training) -> dict[str, Any]:
    """The choices made from this machine; a resumed run records them again (another machine may differ)."""
    machine = training.machine
    return {
        "precision": machine.precision.name,
        **precision_facts(machine),
        "channels_last": machine.channels_last,
        "workers": machine.workers,
        "processes": machine.dist.world_size,
        "allocator": allocator.describe(),
        "compile": training.compiled.enabled,
        "compile_reason": training.compiled.reason,
    }


def precision_facts(machine: Machine) -> dict[str, Any]:
    """What precision auto measured, when it did: the medians, the rule that decided if the measurement
    did not, the load, and whether the verdict came from the cache."""
    verdict = machine.verdict
    if verdict is None or not verdict.seconds:
        return {}
    return {
        "precision_measured_seconds": verdict.seconds,
        "precision_measured_rounds": verdict.rounds,
        "precision_measured_batch": verdict.batch,
        "precision_decided_by": verdict.rule or "measurement",
        "precision_measured_load": verdict.load.others if verdict.load else None,
        "precision_cached": verdict.cached,
    }
