"""How figures are written for people: durations, missing values, a one-line sparkline."""

from __future__ import annotations

import math
from typing import Callable, Sequence

DASH = "—"  # a figure a run does not have (yet)
SPARK_BARS = "▁▂▃▄▅▆▇█"
MEGA = 1e6  # parameters in millions and sizes in MB (10^6 bytes), as torchinfo counts them
GIGA = 1e9  # GFLOPs


def duration(seconds: float) -> str:
    """``h:mm:ss``, rounded to the second."""
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_FORM, DURATION_EXAMPLE = "a duration: seconds, or a number followed by s, m or h", "90s, 20m or 1.5h"


def parse_duration(text: str) -> float:
    """Seconds of ``20m``, ``1.5h``, ``90s`` or a plain number of seconds; "" and 0 are 0 (no budget).
    ValueError for anything else."""
    spelled = str(text).strip().lower()
    if not spelled:
        return 0.0
    scale = DURATION_UNITS.get(spelled[-1])
    number = spelled[:-1] if scale else spelled
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (such as {DURATION_EXAMPLE})") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration (such as {DURATION_EXAMPLE})")
    return seconds


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
