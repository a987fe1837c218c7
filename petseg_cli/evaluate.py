"""Scoring runs on a split: the figures of a report, one CSV row per image, and a picture of samples.

Each run's model is rebuilt from its config.toml and best.pth (or last.pth) alone. It sees every image at
the run's training size, in the run's precision and memory format (as validation during training does), and
is scored either at each image's own size (``--at original``: its probabilities upsampled, against the
full-size trimap) or at the training size (``--at training``: against the trimap shrunk as training does,
which reproduces the run's val_dice on the val split). Only light modules are imported at the top: ``cli``
reads the defaults below.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, files, runs
from .console import info, print_table, warn
from .errors import UsageError
from .settings import DEFAULTS, PRECISIONS, check_batch_size, check_choice

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .predict import Arithmetic

    from .data.oxford_pet import LoadedSplit
    from .metrics import SegmentationScores

DEFAULT_SPLIT = "test"
DEFAULT_VISUALIZE = 10  # images in samples-<split>.png when --visualize has no number
CSV_COLUMNS = ("name", "species", "breed_id", "dice", "iou", "foreground_fraction")
SPECIES_NAMES = {1: "cat", 2: "dog"}
CSV_DIGITS = 6
# The samples picture: tiles per row, inches per tile, dots per inch.
GRID_COLUMNS, TILE_INCHES, DPI = 5, 2.5, 100
KEY_INCHES = 0.4  # the colour key above the tiles


@dataclass
class EvaluateOptions:
    split: str = DEFAULT_SPLIT
    weights: str = runs.DEFAULT_WEIGHTS
    data_dir: Path | None = None  # None: the dataset the run was trained on
    batch_size: int | None = None  # None: the run's own training batch size
    device: str = DEFAULTS.train.device
    tta: bool = False
    visualize: int = 0  # images in the samples picture; 0: no picture
    worst: bool = False  # the lowest-Dice images in the picture instead of the first ones
    at: str = runs.AT_ORIGINAL  # score at each image's own size, or at the run's training size
    precision: str | None = None  # None: the run's own train.precision, resolved on this machine


@dataclass
class Evaluation:
    run_dir: Path
    record: dict[str, Any]  # what eval-<split>.json holds


def check_options(options: EvaluateOptions) -> None:
    from .data.oxford_pet import SPLITS

    if options.split not in SPLITS:
        raise UsageError(f"--split must be one of: {', '.join(SPLITS)}; got {options.split!r}")
    runs.check_weights(options.weights)
    check_choice("--at", options.at, runs.SCORED_AT)
    if options.precision is not None:
        check_choice("--precision", options.precision, PRECISIONS)
    if options.batch_size is not None:
        check_batch_size(options.batch_size)
    if options.visualize < 0:
        raise UsageError(f"--visualize must be 0 or more, got {options.visualize}")


def run_dataset(run_dir: Path) -> Path:
    """The dataset the run was trained on: [run] dataset_path, else [data] data_dir (the first that exists)."""
    settings, facts = runs.read_config(run_dir)
    candidates = [Path(p) for p in (facts.get("dataset_path"), settings.data.data_dir) if p]
    return next((p for p in candidates if p.is_dir()), candidates[-1])


class SplitCache:
    """Decoded splits by (data directory, split, image size), so runs of the same size share one decode."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str, int], LoadedSplit] = {}

    def get(self, data_dir: Path, split: str, size: int) -> "LoadedSplit":
        from .data.oxford_pet import DataMissingError, load_split

        key = (data_dir.resolve(), split, size)
        if key not in self._loaded:
            try:
                loaded = load_split(data_dir, split, size, warn=warn)
            except DataMissingError as exc:
                raise DataMissingError(f"{exc}; or point --data-dir at it") from None
            if loaded.skipped:
                warn(f"{len(loaded.skipped)} file(s) skipped in the {split} split")
            self._loaded[key] = loaded
        return self._loaded[key]


def full_size_mask(sample: Any) -> "np.ndarray":
    """The sample's ground truth at the image's own size (trimap pet and border: 1)."""
    from .data.images import read_label
    from .data.oxford_pet import trimap_to_mask

    return trimap_to_mask(read_label(sample.trimap_path))


def upsampled(log_p: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """(1, C, h, w) log-probabilities -> (1, C, H, W): the probabilities resized bilinearly, as infer does."""
    import torch.nn.functional as F

    probabilities = F.interpolate(log_p.exp(), size=size, mode="bilinear", align_corners=False)
    return probabilities.clamp_min(1e-12).log()


def score(
    model: Any, loaded: "LoadedSplit", batch_size: int, device: "torch.device", tta: bool,
    arithmetic: "Arithmetic", normalization: str, at: str = runs.AT_ORIGINAL,
) -> "SegmentationScores":
    """Every image of the split through the model (its inputs normalised as the run was trained), batch
    by batch, scored at ``at``."""
    import torch
    from tqdm import tqdm

    from .metrics import SegmentationScores
    from .predict import log_probabilities, to_tensor

    scores = SegmentationScores()
    for start in tqdm(range(0, len(loaded), batch_size), desc="evaluating", unit="batch", leave=False, disable=None):
        stop = start + batch_size
        images = to_tensor(loaded.images[start:stop], device, arithmetic.memory_format)
        log_p = log_probabilities(model, images, normalization, tta, arithmetic.precision)
        if at == runs.AT_TRAINING:
            scores.update(log_p, torch.from_numpy(loaded.masks[start:stop]).long().to(device))
            continue
        for index, sample in enumerate(loaded.samples[start:stop]):
            mask = torch.from_numpy(full_size_mask(sample)).long().to(device)
            scores.update(upsampled(log_p[index : index + 1], tuple(mask.shape)), mask[None])
    return scores


def csv_text(loaded: "LoadedSplit", scores: "SegmentationScores") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for sample, dice, iou, fraction in zip(loaded.samples, scores.dice, scores.iou, scores.foreground_fraction):
        species = SPECIES_NAMES.get(sample.species, "")
        writer.writerow([sample.name, species, sample.breed_id, *(f"{v:.{CSV_DIGITS}f}" for v in (dice, iou, fraction))])
    return buffer.getvalue()


def sample_indices(dice: list[float], count: int, worst: bool) -> list[int]:
    """The first ``count`` images, or the ``count`` with the lowest Dice (lowest first)."""
    order = sorted(range(len(dice)), key=lambda i: dice[i]) if worst else range(len(dice))
    return list(order)[:count]


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the samples picture for ``count`` tiles."""
    columns = min(count, GRID_COLUMNS)
    return math.ceil(count / columns), columns


def colour_key() -> list[Any]:
    """The legend of the sample sheet: what red and green mean on every tile."""
    from matplotlib.patches import Patch

    from .overlay import PREDICTION_RGB, TRUTH_RGB

    rgb = lambda colour: tuple(c / 255 for c in colour)  # noqa: E731
    return [
        Patch(facecolor=rgb(PREDICTION_RGB), alpha=0.6, edgecolor=rgb(PREDICTION_RGB), label="prediction (tinted, outlined)"),
        Patch(facecolor="none", edgecolor=rgb(TRUTH_RGB), linewidth=2, label="ground truth (outlined)"),
    ]


def save_samples(
    path: Path, model: Any, loaded: "LoadedSplit", dice: list[float], indices: list[int],
    device: "torch.device", tta: bool, arithmetic: "Arithmetic", normalization: str,
) -> None:
    """A grid of tiles: each image with the prediction in red, the ground truth outlined in green (at the
    training size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no GUI backend, no global state
    from matplotlib.figure import Figure

    from .overlay import comparison_overlay
    from .predict import log_probabilities, to_tensor

    images = to_tensor(loaded.images[indices], device, arithmetic.memory_format)
    predictions = log_probabilities(model, images, normalization, tta, arithmetic.precision).argmax(1).cpu().numpy()
    rows, columns = grid_shape(len(indices))
    figure = Figure(figsize=(columns * TILE_INCHES, rows * TILE_INCHES + KEY_INCHES), dpi=DPI)
    for tile, (index, prediction) in enumerate(zip(indices, predictions), start=1):
        axes = figure.add_subplot(rows, columns, tile)
        axes.imshow(comparison_overlay(loaded.images[index], loaded.masks[index], prediction))
        axes.set_title(f"{loaded.samples[index].name}\nDice {dice[index]:.3f}", fontsize=8)
        axes.axis("off")
    figure.tight_layout(rect=(0, 0, 1, 1 - KEY_INCHES / (rows * TILE_INCHES + KEY_INCHES)))
    figure.legend(handles=colour_key(), loc="upper center", ncol=2, frameon=False, fontsize=9)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    with files.atomic_writer(path) as f:
        f.write(buffer.getvalue())


def evaluate_run(run_dir: Path, options: EvaluateOptions, device: "torch.device", cache: SplitCache) -> Evaluation:
    """Score one run, write eval-<tag>.json and .csv (and samples-<tag>.png) into it."""
    import torch

    from .predict import load_model, run_arithmetic

    model, settings, checkpoint = load_model(run_dir, options.weights, device)
    arithmetic = run_arithmetic(settings, device, options.precision)
    model = model.to(memory_format=arithmetic.memory_format)
    data_dir = options.data_dir or run_dataset(run_dir)
    loaded = cache.get(data_dir, options.split, settings.data.image_size)
    batch_size = options.batch_size or settings.train.batch_size

    started = time.perf_counter()
    scores = score(
        model, loaded, batch_size, device, options.tta, arithmetic, settings.data.normalization, options.at
    )
    seconds = time.perf_counter() - started
    degenerate = scores.degenerate()
    if degenerate:
        warn(f"{run_dir} ({options.weights} weights, {options.split} split): {degenerate}")
    record = {
        "run": str(run_dir),
        "split": options.split,
        "images": len(scores),
        **scores.summary(),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(scores) / seconds, 3) if seconds > 0 else None,
        "settings": {
            "model": settings.model.name,
            "weights": options.weights,
            "checkpoint_epoch": checkpoint.get("epoch"),
            "tta": options.tta,
            "at": options.at,
            "image_size": settings.data.image_size,
            "precision": arithmetic.precision.name,
            "channels_last": arithmetic.channels_last,
            "batch_size": batch_size,
            "device": str(device),
            "data_dir": str(data_dir),
        },
        "skipped": loaded.skipped,
        "petseg_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    where = {"split": options.split, "weights": options.weights, "at": options.at, "tta": options.tta}
    written = [runs.evaluation_file(run_dir, "json", **where), runs.evaluation_file(run_dir, "csv", **where)]
    files.write_json_atomic(written[0], record)
    files.write_text_atomic(written[1], csv_text(loaded, scores))
    if options.visualize:
        written.append(runs.evaluation_file(run_dir, "samples", **where))
        indices = sample_indices(scores.dice, options.visualize, options.worst)
        save_samples(
            written[-1], model, loaded, scores.dice, indices, device, options.tta, arithmetic,
            settings.data.normalization,
        )
    info(f"{run_dir}: wrote {', '.join(p.name for p in written)}")
    return Evaluation(run_dir, record)


# Table columns after run and images: (header, key in the metrics), the headline first.
FIGURES = (
    ("Dice", "dice"),
    ("pooled Dice", "pooled_dice"),
    ("IoU", "iou"),
    ("pixel acc.", "pixel_accuracy"),
    ("CE", "cross_entropy"),
)


def results_table(evaluations: list[Evaluation], options: EvaluateOptions) -> Any:
    from rich.table import Table

    size = "each image's original size" if options.at == runs.AT_ORIGINAL else "the run's training size"
    title = f"{options.split} split, {options.weights} weights, scored at {size}" + (
        ", TTA: horizontal flip" if options.tta else ""
    )
    table = Table(title=title)
    table.add_column("run")
    for header in ("images", *(header for header, _ in FIGURES), "seconds", "images/s"):
        table.add_column(header, justify="right")
    for evaluation in evaluations:
        m = evaluation.record
        table.add_row(
            str(evaluation.run_dir),
            str(m["images"]),
            *(f"{m[key]:.4f}" for _, key in FIGURES),
            f"{m['seconds']:.1f}",
            f"{m['images_per_s']:.1f}" if m["images_per_s"] else "-",
        )
    return table


def evaluate(run_dirs: list[Path], options: EvaluateOptions) -> list[Evaluation]:
    """Score each run on ``options.split``, print one table row per run, return the records."""
    from .machine.devices import resolve_device

    check_options(options)
    for run_dir in run_dirs:  # fail before any work when one of them is no run
        runs.read_config(run_dir)
    device = resolve_device(options.device)
    cache = SplitCache()
    evaluations = [evaluate_run(run_dir, options, device, cache) for run_dir in run_dirs]
    print_table(results_table(evaluations, options))
    return evaluations
