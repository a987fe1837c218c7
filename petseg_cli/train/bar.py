"""The training progress bar's text: the run's time left first, so that an 80-column terminal shows it
(tqdm shrinks the bar itself to fit the width, but cuts text that does not fit)."""

from __future__ import annotations

from typing import Any

# tqdm's own format without its per-epoch "<remaining" and its batches per second (img/s says the
# speed; the time left is the run's, in the postfix).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def postfix(left: str, loss: float, images_per_second: float) -> str:
    """The run's time left, the epoch's loss so far and the speed."""
    return f"left {left}, loss {loss:.4f}, {images_per_second:.1f} img/s"


def bar_options(description: str, quiet: bool | None) -> dict[str, Any]:
    return {"desc": description, "leave": False, "unit": "batch", "disable": quiet, "bar_format": BAR_FORMAT}


def rendered(description: str, done: int, total: int, elapsed: float, text: str, columns: int) -> str:
    """The bar's line as tqdm draws it in ``columns`` columns."""
    from tqdm import tqdm

    return tqdm.format_meter(done, total, elapsed, ncols=columns, prefix=description, postfix=text, bar_format=BAR_FORMAT)
