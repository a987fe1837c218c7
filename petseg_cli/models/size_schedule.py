"""Progressive resizing's schedule: the square size a run trains at, growing over the run.

    "128:256"                   start:end, the default phases: 128 for the first half, the size between
                                (192) from 50%, 256 for the last 30% (DEFAULT_FRACTIONS)
    "128@0,192@0.4,256@0.7"     size@fraction of the run's epochs at which that size starts

The fraction of an epoch is the share of the run's epochs finished before it starts (with a time budget:
of the epochs planned to fit it, which a re-plan may move; a size never shrinks again). The last size
is the run's image_size (what validation, infer, export and evaluate use), and the last epoch always
trains at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import UsageError, malformed
from . import SIZE_MULTIPLE, check_image_size

DEFAULT_FRACTIONS = (0.0, 0.5, 0.7)  # where start:end's start size, its middle size and its end size begin
OPTION = "--size-schedule"
# What each option that takes a schedule expects, and an example: the sentence a value it cannot read gets.
FORMS = {
    OPTION: ("SIZE@FRACTION phases separated by commas, or START:END", "128@0,192@0.4,256@0.7 or 128:256"),
    "--image-size": (f"a size in pixels (a multiple of {SIZE_MULTIPLE}) or START:END", "256 or 128:256"),
}


@dataclass(frozen=True)
class SizeSchedule:
    sizes: tuple[int, ...]  # growing
    starts: tuple[float, ...]  # the fraction of the run at which each size starts; the first is 0

    @property
    def final(self) -> int:
        return self.sizes[-1]

    def size_at(self, epoch: int, epochs: int, floor: int = 0) -> int:
        """The size epoch ``epoch`` (1-based) of ``epochs`` trains at; never below ``floor`` (the size
        of the epoch before, when a re-planned run would go back)."""
        if epoch >= epochs:
            return self.final
        done = (epoch - 1) / epochs
        size = [s for s, start in zip(self.sizes, self.starts) if start <= done + 1e-9][-1]
        return max(size, floor)

    def text(self) -> str:
        return ",".join(f"{s}@{start:g}" for s, start in zip(self.sizes, self.starts))


def wrong(option: str, text: str, why: str = "") -> UsageError:
    form, example = FORMS.get(option, FORMS[OPTION])
    return malformed(option, form, example, text.strip(), why)


def parse_size_schedule(text: str, option: str = OPTION) -> SizeSchedule | None:
    """``text`` ("" : none) as a schedule, every size a multiple of SIZE_MULTIPLE; a UsageError says what is wrong."""
    text = text.strip()
    if not text:
        return None
    if ":" in text:
        return _start_end(text, option)
    sizes, starts = [], []
    for phase in text.split(","):
        size, at, start = phase.strip().partition("@")
        if not at:
            raise wrong(option, text, f"{phase.strip()!r} is not SIZE@FRACTION")
        sizes.append(_size(size, option, text))
        starts.append(_fraction(start, option, text))
    if starts[0] != 0:
        raise wrong(option, text, "the first size must start at 0")
    if any(b <= a for a, b in zip(starts, starts[1:])) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise wrong(option, text, "sizes and fractions must both grow from one phase to the next")
    return SizeSchedule(tuple(sizes), tuple(starts))


def _start_end(text: str, option: str) -> SizeSchedule:
    start, _, end = text.partition(":")
    first, last = _size(start, option, text), _size(end, option, text)
    if first >= last:
        raise wrong(option, text, "START:END must grow (START smaller than END)")
    middle = round((first + last) / 2 / SIZE_MULTIPLE) * SIZE_MULTIPLE
    sizes = (first, middle, last) if first < middle < last else (first, last)
    starts = DEFAULT_FRACTIONS if len(sizes) == 3 else (DEFAULT_FRACTIONS[0], DEFAULT_FRACTIONS[2])
    return SizeSchedule(sizes, starts)


def _size(text: str, option: str, whole: str) -> int:
    try:
        size = int(text.strip())
    except ValueError:
        raise wrong(option, whole, f"{text.strip()!r} is not a size in pixels") from None
    check_image_size(size, option)
    return size


def _fraction(text: str, option: str, whole: str) -> float:
    try:
        fraction = float(text.strip())
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction < 1.0:
        raise wrong(option, whole, f"a size's start must be a fraction of the run, 0 or more and below 1, not {text.strip()!r}")
    return fraction
