"""What every benchmark script prints with: the machine's load beside each figure, and targets met or missed.

The scripts run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path`` and they import it
as ``common``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class Verdicts:
    """The targets a run missed; ``check`` says "met" or "MISSED" for the line that shows a figure."""

    missed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> str:
        if not ok:
            self.missed.append(what)
        return "met" if ok else "MISSED"


def load() -> str:
    """The load averages, printed beside each figure: on a shared machine only ratios taken together count."""
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(text: str = "") -> None:
    print(text, flush=True)
