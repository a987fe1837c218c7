"""How figures are written for people: durations, missing values, a one-line sparkline."""

from __future__ import annotations

from typing import Callable, Sequence

DASH = "—"  # a figure a run does not have (yet)
SPARK_BARS = "▁▂▃▄▅▆▇█"
MEGA = 1e6  # parameters in millions and sizes in MB (10^6 bytes), as torchinfo counts them
GIGA = 1e9  # GFLOPs


def duration(seconds: float) -> str:
    """``h:mm:ss``, rounded to the second."""
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def or_dash(value: object, show: Callable[[object], str]) -> str:
    return DASH if value is None else show(value)


def sparkline(values: Sequence[float]) -> str:
    """One bar per value, from the lowest (▁) to the highest (█) of ``values``."""
    if not values:
        return ""
    low, high = min(values), max(values)
    top = len(SPARK_BARS) - 1
    if high == low:
        return SPARK_BARS[top] * len(values)
    return "".join(SPARK_BARS[round((v - low) / (high - low) * top)] for v in values)
