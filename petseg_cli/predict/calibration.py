"""Thresholds and calibration from one record per image: how many of its pixels have each 8-bit pet
probability (0-255), counted apart for pixels that are pet and that are not.

From it the Dice of any threshold follows without running the model again (a threshold t marks pet
from level ``masks.threshold_level(t)`` up, as infer's masks do), and so does the calibration of the
pixel probabilities: the expected calibration error over equal-width bins, and a reliability diagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.errors import UsageError, malformed
from ..data.masks import threshold_level

LEVELS = 256
CALIBRATION_BINS = 10


THRESHOLDS_FORM = "START:STOP:STEP or thresholds separated by commas, each between 0 and 1"
THRESHOLDS_EXAMPLE = "0.3:0.7:0.05 or 0.4,0.5,0.6"


def parse_thresholds(text: str, option: str = "--thresholds") -> list[float]:
    """``0.3:0.7:0.05`` (start:stop:step, stop included) or ``0.4,0.5,0.6`` -> the thresholds, each in
    (0, 1), at most one per 8-bit level; a UsageError in one sentence says what the option expects."""

    def wrong(why: str = "") -> UsageError:
        return malformed(option, THRESHOLDS_FORM, THRESHOLDS_EXAMPLE, text, why)

    parts = [part.strip() for part in text.split(":" if ":" in text else ",") if part.strip() or ":" in text]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise wrong() from None
    if ":" in text:
        if len(numbers) != 3:
            raise wrong("START:STOP:STEP takes three numbers")
        start, stop, step = numbers
        if not step > 0 or not stop >= start:
            raise wrong("START at most STOP, and a positive STEP")
        count = int(round((stop - start) / step)) + 1
        if count > LEVELS:
            raise wrong(f"more than {LEVELS} thresholds: a larger STEP")
        numbers = [round(start + i * step, 6) for i in range(count)]
    if not numbers or not all(0 < v < 1 for v in numbers):
        raise wrong("each threshold between 0 and 1, exclusive")
    return sorted(set(numbers))


class PixelHistogram:
    """Per image, the count of pixels at each 8-bit probability, for truth pet (row 1) and not (row 0)."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []  # one (2, 256) int64 array per image

    def update(self, probability: np.ndarray, truth: np.ndarray) -> None:
        """One image: its (H, W) uint8 pet probability and its (H, W) ground truth (non-0: pet)."""
        pet = (truth != 0).ravel()
        levels = probability.ravel()
        counts = np.stack([np.bincount(levels[~pet], minlength=LEVELS), np.bincount(levels[pet], minlength=LEVELS)])
        self.images.append(counts.astype(np.int64))

    def dice(self, threshold: float) -> np.ndarray:
        """Each image's Dice with pet from ``threshold`` up (1.0 where both masks are empty)."""
        h = np.stack(self.images)  # (N, 2, 256)
        level = threshold_level(threshold)
        intersection = h[:, 1, level:].sum(1)
        predicted = h[:, :, level:].sum((1, 2))
        truth = h[:, 1].sum(1)
        total = predicted + truth
        return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)

    def sweep(self, thresholds: list[float]) -> list[tuple[float, float]]:
        """(threshold, mean per-image Dice) for each threshold."""
        return [(t, float(self.dice(t).mean())) for t in thresholds]

    def reliability(self, bins: int = CALIBRATION_BINS) -> "Reliability":
        """Pixels grouped by their pet probability into ``bins`` equal-width bins: how sure the model was
        and how often it was right (the share that is pet), and the expected calibration error."""
        total = np.stack(self.images).sum(0)  # (2, 256)
        p = np.arange(LEVELS) / (LEVELS - 1)
        edges = np.minimum((p * bins).astype(int), bins - 1)
        count = np.bincount(edges, weights=total.sum(0), minlength=bins)
        confidence = np.bincount(edges, weights=total.sum(0) * p, minlength=bins) / np.maximum(count, 1)
        observed = np.bincount(edges, weights=total[1], minlength=bins) / np.maximum(count, 1)
        ece = float((count * np.abs(confidence - observed)).sum() / max(count.sum(), 1))
        return Reliability(count.astype(int).tolist(), confidence.tolist(), observed.tolist(), ece)


@dataclass(frozen=True)
class Reliability:
    count: list[int]  # pixels per bin
    confidence: list[float]  # their mean pet probability
    observed: list[float]  # the share of them that is pet
    ece: float  # expected calibration error: sum over bins of count x |confidence - observed| / pixels

    def plot(self, path: Path, title: str) -> None:
        """The reliability diagram: observed pet share against the mean probability, per bin."""
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..base import files

        figure = Figure(figsize=(4.5, 4.5), dpi=100)
        axes = figure.add_subplot()
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
        shown = [i for i, n in enumerate(self.count) if n]
        axes.plot([self.confidence[i] for i in shown], [self.observed[i] for i in shown], marker="o", label="model")
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="pet probability (bin mean)", ylabel="share of pixels that are pet")
        axes.set_title(f"{title}\nECE {self.ece:.4f} over {len(self.count)} bins", fontsize=9)
        axes.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        FigureCanvasAgg(figure).print_png(buffer)
        with files.atomic_writer(path) as f:
            f.write(buffer.getvalue())
