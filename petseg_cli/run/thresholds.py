"""threshold.json: the mask thresholds chosen on the val split (``petseg evaluate --split val
--thresholds``), each stored with what it was tuned for (the weights, TTA, the size scored at). A model
uses one only with the weights and TTA it was tuned for; else the default, and it says why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError
from ..base.files import write_json_atomic
from .layout import DEFAULT_WEIGHTS, THRESHOLD, read_json

TUNED = "tuned"  # threshold.json's list of records


@dataclass(frozen=True)
class ThresholdChoice:
    """The mask threshold a model uses, and why, in words."""

    value: float
    reason: str
    tuned: bool = False  # chosen on the val split for these weights and TTA (else the default)

    def describe(self) -> str:
        return f"threshold {self.value:g} ({self.reason})"


def for_what(weights: str, tta: bool) -> str:
    return f"{weights} weights, {'with' if tta else 'no'} TTA"


def _valid(record: Any) -> bool:
    value = record.get("threshold") if isinstance(record, dict) else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def read_tuned(run_dir: Path) -> list[dict[str, Any]]:
    """Every valid record of threshold.json; one written before records said what they were tuned for
    was tuned for the best weights without TTA (all there was then). [] when there is none."""
    try:
        stored = read_json(run_dir / THRESHOLD)
    except (FileNotFoundError, PetsegError):
        return []
    records = stored.get(TUNED) if isinstance(stored, dict) and TUNED in stored else [stored]
    defaults = {"weights": DEFAULT_WEIGHTS, "tta": False}
    return [{**defaults, **r} for r in records if _valid(r)] if isinstance(records, list) else []


def write_threshold(run_dir: Path, record: dict[str, Any]) -> Path:
    """Store ``record`` (with its ``weights`` and ``tta``), replacing the one tuned for the same."""
    same = lambda r: (r["weights"], bool(r["tta"])) == (record["weights"], bool(record["tta"]))  # noqa: E731
    kept = [r for r in read_tuned(run_dir) if not same(r)]
    write_json_atomic(run_dir / THRESHOLD, {TUNED: [*kept, record]})
    return run_dir / THRESHOLD


def choose_threshold(run_dir: Path, weights: str, tta: bool) -> ThresholdChoice:
    """The threshold tuned for ``weights`` and ``tta``, else the default, saying which and why."""
    from ..data.masks import DEFAULT_THRESHOLD  # numpy and PIL: not at import time (infer stays light)

    tuned = read_tuned(run_dir)
    for record in tuned:
        if record["weights"] == weights and bool(record["tta"]) == tta:
            at = f", scored at {record['at']} size" if record.get("at") else ""
            return ThresholdChoice(float(record["threshold"]), f"tuned for {for_what(weights, tta)}{at} on the val split by petseg evaluate --thresholds", True)
    if not tuned:
        return ThresholdChoice(DEFAULT_THRESHOLD, "the default: none was tuned; petseg evaluate --split val --thresholds tunes one")
    others = "; ".join(for_what(r["weights"], bool(r["tta"])) for r in tuned)
    return ThresholdChoice(DEFAULT_THRESHOLD, f"the default: the tuned one is for {others}, not {for_what(weights, tta)}")
