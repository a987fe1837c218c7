"""Scoring runs on a split: the figures of a report, one CSV row per image, and a picture of samples.

Each run's model is opened by ``predictor`` (config.toml and best.pth or last.pth alone), computing in the
precision the run recorded; or, with ``--model-file``, an exported file of the run's weights on onnxruntime
or OpenVINO (``--runtime``), whose files are named for the file, the runtime and its precision. It sees every image at the run's training size and is scored either at each
image's own size (``--at original``: exactly the masks ``petseg infer`` writes, the 8-bit probability
resized back to the photo, against the full-size trimap) or at the training size (``--at training``:
against the trimap shrunk as training does, which reproduces the run's val_dice on the val split). Returns
records; cli.py prints the table. Only light modules are imported at the top: ``cli`` reads the defaults.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..base import files
from ..base.console import info, warn
from ..base.errors import UsageError
from ..run import AT_ORIGINAL, AT_TRAINING, DEFAULT_WEIGHTS, SCORED_AT, DataSet, Measure, Run, check_weights
from ..config.settings import DEFAULTS, PRECISIONS, RUNTIMES, check_batch_size, check_choice
from ..predict.metadata import ONNX_SUFFIX

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..predict.calibration import PixelHistogram, Reliability
    from ..predict.groups import GroupScores
    from ..data.oxford_pet import LoadedSplit
    from ..predict.metrics import SegmentationScores
    from ..predict.predictor import Predictor

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
    weights: str = DEFAULT_WEIGHTS
    data_dir: Path | None = None  # None: the dataset the run was trained on
    batch_size: int | None = None  # None: the run's own training batch size
    device: str = DEFAULTS.train.device
    tta: bool = False
    visualize: int = 0  # images in the samples picture; 0: no picture
    worst: bool = False  # the lowest-Dice images in the picture instead of the first ones
    at: str = AT_ORIGINAL  # score at each image's own size, or at the run's training size
    precision: str | None = None  # None: the run's own train.precision, resolved on this machine
    by: tuple[str, ...] = ()  # scores by group too: breed, species
    thresholds: str | None = None  # a sweep of mask thresholds, e.g. 0.3:0.7:0.05, and calibration
    model_file: Path | None = None  # an exported .onnx file of the run's weights, scored instead of the run's own model
    runtime: str | None = None  # what runs it (None: serve.runtime's default)
    tta_scales: str | None = None  # multi-scale TTA, e.g. "0.75,1,1.25" (None: one scale)


@dataclass
class Evaluation:
    run_dir: Path
    record: dict[str, Any]  # what eval-<tag>.json holds
    written: list[Path]  # the files written into the run
    groups: dict[str, list["GroupScores"]] = field(default_factory=dict)  # by breed / species
    sweep: list[tuple[float, float]] = field(default_factory=list)  # (threshold, mean Dice)
    reliability: "Reliability | None" = None
    threshold_recorded: bool = False  # the best threshold was chosen on val and kept for infer and serve
    data: str | None = None  # the other data set's key; None: the run's own


def check_options(options: EvaluateOptions) -> None:
    from ..data.oxford_pet import SPLITS

    if options.split not in SPLITS:
        raise UsageError(f"--split must be one of: {', '.join(SPLITS)}; got {options.split!r}")
    check_weights(options.weights)
    check_choice("--at", options.at, SCORED_AT)
    if options.precision is not None:
        check_choice("--precision", options.precision, PRECISIONS)
    if options.batch_size is not None:
        check_batch_size(options.batch_size)
    from ..predict.groups import GROUPINGS

    for by in options.by:
        check_choice("--by", by, GROUPINGS)
    if options.thresholds is not None:
        from ..predict.calibration import parse_thresholds

        parse_thresholds(options.thresholds)
    if options.visualize < 0:
        raise UsageError(f"--visualize must be 0 or more, got {options.visualize}")
    if options.runtime is not None:
        check_choice("--runtime", options.runtime, RUNTIMES)
    from ..predict.multiscale import parse_scales

    parse_scales(options.tta_scales)
    if options.model_file is not None and options.model_file.suffix.lower() != ONNX_SUFFIX:
        raise UsageError(f"--model-file takes an exported {ONNX_SUFFIX} file (petseg export RUN writes RUN/model{ONNX_SUFFIX}), "
                         f"not {options.model_file}")
    if options.runtime is not None and options.model_file is None:
        raise UsageError("--runtime runs an exported .onnx file: pass it with --model-file (petseg export RUN writes RUN/model.onnx)")
    if options.model_file is not None and options.thresholds is not None:
        raise UsageError("--thresholds tunes the run's own model's threshold: leave out --model-file")


class SplitCache:
    """Decoded splits by (data directory, split, image size, subset), so runs of the same size share one
    decode."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str, int, int | None, int], LoadedSplit] = {}

    def get(self, data_dir: Path, split: str, size: int, keep: int | None = None, seed: int = 0) -> "LoadedSplit":
        from ..data.oxford_pet import DataMissingError, load_split

        key = (data_dir.resolve(), split, size, keep, seed if keep else 0)
        if key not in self._loaded:
            try:
                loaded = load_split(data_dir, split, size, warn=warn, keep=keep, seed=seed)
            except DataMissingError as exc:
                raise DataMissingError(f"{exc}; or point --data-dir at it") from None
            if loaded.skipped:
                warn(f"{len(loaded.skipped)} file(s) skipped in the {split} split")
            self._loaded[key] = loaded
        return self._loaded[key]


def full_size_mask(sample: Any) -> "np.ndarray":
    """The sample's ground truth at the image's own size (trimap pet and border: 1)."""
    from ..data.images import read_label
    from ..data.oxford_pet import trimap_to_mask

    return trimap_to_mask(read_label(sample.trimap_path))


# The 8-bit probability p/255 of a mask, clamped half a step from 0 and 1, so that its cross-entropy is finite.
HALF_STEP = 0.5 / 255


def log_probabilities_of(probability: "np.ndarray") -> "torch.Tensor":
    """An (H, W) uint8 pet probability -> (1, 2, H, W) log-probabilities whose argmax is ``masks.pet_mask``
    (pet where the 8-bit value is 128 or more)."""
    import numpy as np
    import torch

    p = np.clip(probability.astype(np.float32) / 255, HALF_STEP, 1 - HALF_STEP)
    return torch.from_numpy(np.log(np.stack([1 - p, p]))[None])


def score(
    predictor: "Predictor", loaded: "LoadedSplit", batch_size: int, tta: bool, at: str = AT_ORIGINAL,
    histogram: "PixelHistogram | None" = None,
) -> "SegmentationScores":
    """Every image of the split through the model, batch by batch, scored ``at`` the original size (the
    masks infer writes) or the training size (what validation scores); each image's 8-bit probabilities
    counted into ``histogram`` too, when given (threshold sweeps, calibration)."""
    from tqdm import tqdm

    from ..predict.metrics import SegmentationScores
    from ..predict.pipeline import pipelined

    scores = SegmentationScores()
    starts = range(0, len(loaded), batch_size)
    with tqdm(total=len(starts), desc="evaluating", unit="batch", leave=False, disable=None) as bar:

        def finish(prepared: tuple[int, "np.ndarray", Any], predicted: "np.ndarray") -> None:
            score_batch(scores, predictor, prepared[2], predicted, at, histogram)
            bar.update()

        pipelined(starts, lambda start: truth_of(loaded, start, batch_size, at), lambda p: predicted_of(predictor, p[1], tta, at), finish)
    return scores


def truth_of(loaded: "LoadedSplit", start: int, batch_size: int, at: str) -> tuple[int, "np.ndarray", Any]:
    """A batch's images and its ground truth: the masks at the training size, else each trimap read at
    the image's own size (a thread of its own, while the model runs)."""
    end = start + batch_size
    if at == AT_TRAINING:
        return start, loaded.images[start:end], loaded.masks[start:end]
    return start, loaded.images[start:end], [full_size_mask(sample) for sample in loaded.samples[start:end]]


def predicted_of(predictor: "Predictor", batch: "np.ndarray", tta: bool, at: str) -> "np.ndarray":
    """The model's log-probabilities (scored at the training size), else its 8-bit pet probabilities."""
    from ..data.masks import to_8bit

    return predictor.log_probabilities(batch, tta) if at == AT_TRAINING else to_8bit(predictor.pet_probability(batch, tta))


def score_batch(
    scores: "SegmentationScores", predictor: "Predictor", masks: Any, predicted: "np.ndarray", at: str,
    histogram: "PixelHistogram | None",
) -> None:
    """Score a batch's predictions against its truth (and count them into ``histogram``), in order."""
    import numpy as np
    import torch

    from ..data.masks import at_image_sizes, pet_mask, to_8bit

    if at == AT_TRAINING:
        scores.update(torch.from_numpy(predicted), torch.from_numpy(masks).long())
        probabilities = list(to_8bit(np.exp(predicted[:, 1])))
    else:
        probabilities = at_image_sizes(predicted, [m.shape for m in masks])
        for probability, mask in zip(probabilities, masks):
            pet = torch.from_numpy(pet_mask(probability, predictor.info.threshold) != 0)[None]  # infer's mask
            scores.update(log_probabilities_of(probability), torch.from_numpy(mask).long()[None], pet)
    for probability, mask in zip(probabilities if histogram is not None else [], masks):
        histogram.update(probability, mask)


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

    from ..predict.overlay import PREDICTION_RGB, TRUTH_RGB

    rgb = lambda colour: tuple(c / 255 for c in colour)  # noqa: E731
    return [
        Patch(facecolor=rgb(PREDICTION_RGB), alpha=0.6, edgecolor=rgb(PREDICTION_RGB), label="prediction (tinted, outlined)"),
        Patch(facecolor="none", edgecolor=rgb(TRUTH_RGB), linewidth=2, label="ground truth (outlined)"),
    ]


def save_samples(path: Path, predictor: "Predictor", loaded: "LoadedSplit", dice: list[float], indices: list[int], tta: bool) -> None:
    """A grid of tiles: each image with the prediction in red, the ground truth outlined in green (at the
    training size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no GUI backend, no global state
    from matplotlib.figure import Figure

    from ..predict.overlay import comparison_overlay

    predictions = predictor.log_probabilities(loaded.images[indices], tta).argmax(1)
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


def evaluate_run(run: Run, options: EvaluateOptions, cache: SplitCache) -> Evaluation:
    """Score one run, write eval-<tag>.json and .csv (and samples-<tag>.png) into it: named for the data
    set too when it is not the run's own, so that never replaces the run's own figures."""
    from ..data.demo_set import resolve_data_dir
    from ..data.oxford_pet import run_subset

    predictor = open_model(run, options)
    settings, run_dir = run.settings, run.path
    data_dir = resolve_data_dir(options.data_dir) if options.data_dir else run.dataset_dir
    data = DataSet.of(data_dir)
    model = model_tag(options.model_file, predictor) if options.model_file else None
    measure = run.measure(options.split, predictor.info.weights, options.at, options.tta, data, model, predictor.scales)
    if measure.data:
        info(f"{data_dir} is not the data set {run_dir} trained on: its scores go to files named for it ({measure.tag})")
    keep = run_subset(data_dir, options.split, settings.data.fraction, settings.data.limit)
    if keep is not None:
        info(f"{run_dir} trained on part of the data: scoring the {keep} {options.split} images it used")
    loaded = cache.get(data_dir, options.split, settings.data.image_size, keep, settings.train.seed)
    batch_size = options.batch_size or settings.train.batch_size

    from ..predict.calibration import PixelHistogram

    histogram = PixelHistogram() if options.thresholds is not None else None
    started = time.perf_counter()
    scores = score(predictor, loaded, batch_size, options.tta, options.at, histogram)
    seconds = time.perf_counter() - started
    degenerate = scores.degenerate()
    if degenerate:
        warn(f"{run_dir} ({options.weights} weights, {options.split} split): {degenerate}")
    record = evaluation_record(run, options, predictor, loaded, scores, seconds, batch_size)
    record["data"] = data.to_dict(own=measure.data is None)
    written = [measure.file(run_dir, "json"), measure.file(run_dir, "csv")]
    files.write_text_atomic(written[1], csv_text(loaded, scores))
    if options.visualize:
        written.append(measure.file(run_dir, "samples"))
        indices = sample_indices(scores.dice, options.visualize, options.worst)
        save_samples(written[-1], predictor, loaded, scores.dice, indices, options.tta)
    evaluation = Evaluation(run_dir, record, written, data=measure.data)
    add_groups(evaluation, options, loaded, scores, measure)
    if histogram is not None:
        add_sweep(evaluation, run, options, histogram, measure)
    files.write_json_atomic(written[0], record)
    return evaluation


def open_model(run: Run, options: EvaluateOptions) -> "Predictor":
    """What computes the scores: the run's own model (its ``--weights``), or ``--model-file``, an exported
    file of the run's weights, on ``--runtime``; with ``--tta-scales``, at each of those scales, averaged."""
    from ..predict.multiscale import MultiScale, parse_scales

    predictor = open_single_model(run, options)
    scales = parse_scales(options.tta_scales)
    return MultiScale(predictor, scales) if scales else predictor


def open_single_model(run: Run, options: EvaluateOptions) -> "Predictor":
    from ..predict.predictor import open_predictor

    if options.model_file is None:
        return open_predictor(run, options.weights, options.device, options.precision, tta=options.tta)
    weights = options.weights if options.weights != DEFAULT_WEIGHTS else None  # else the file's own
    predictor = open_predictor(options.model_file, weights, options.device, options.precision, tta=options.tta,
                               runtime=options.runtime or DEFAULTS.serve.runtime)
    exported = predictor.metadata
    weights_path = run.check_weights(predictor.info.weights)
    if files.sha256(weights_path) != exported.weights_sha256:
        raise UsageError(f"{options.model_file} was not exported from {weights_path} (its weights are "
                         f"{exported.weights_file} of run {exported.run!r}): pass that run, or export this one again")
    return predictor


def model_tag(model_file: Path, predictor: "Predictor") -> str:
    """``model-openvino-bf16``: the file's stem, the runtime and the precision it computed in."""
    return f"{model_file.stem}-{predictor.info.backend}-{predictor.info.precision}"


def add_groups(evaluation: Evaluation, options: EvaluateOptions, loaded: "LoadedSplit", scores: "SegmentationScores", measure: Measure) -> None:
    """Scores by breed or species: into the record, the table and eval-<tag>-by-<group>.csv."""
    from ..predict.groups import group_scores, groups_csv

    for by in options.by:
        rows = evaluation.groups[by] = group_scores(loaded.samples, scores, by)
        evaluation.record.setdefault("by", {})[by] = [row.to_dict() for row in rows]
        path = measure.file(evaluation.run_dir, "groups", by=by)
        files.write_text_atomic(path, groups_csv(by, rows))
        evaluation.written.append(path)


def add_sweep(evaluation: Evaluation, run: Run, options: EvaluateOptions, histogram: "PixelHistogram", measure: Measure) -> None:
    """The Dice of each threshold, the best one (kept for infer and serve when chosen on the val split of
    the run's own data set: never on the test split, never on another data set's), the calibration error
    and the reliability diagram."""
    from ..predict.calibration import parse_thresholds

    sweep = evaluation.sweep = histogram.sweep(parse_thresholds(options.thresholds))
    best, best_dice = max(sweep, key=lambda item: (item[1], -abs(item[0] - 0.5)))
    reliability = evaluation.reliability = histogram.reliability()
    evaluation.record["thresholds"] = {
        "dice": [[t, round(d, 6)] for t, d in sweep], "best": best, "best_dice": round(best_dice, 6),
        "ece": round(reliability.ece, 6), "bins": len(reliability.count),
    }
    plot = measure.file(evaluation.run_dir, "reliability")
    reliability.plot(plot, f"{evaluation.run_dir.name}: {options.split} split")
    evaluation.written.append(plot)
    if options.split == "val" and measure.data is None and not measure.scales:  # infer and serve predict at one scale
        record = {
            "threshold": best, "val_dice": round(best_dice, 6), "chosen_from": [t for t, _ in sweep],
            "split": options.split, "weights": options.weights, "at": options.at, "tta": options.tta,
        }
        evaluation.written.append(run.write_threshold(record))
        evaluation.threshold_recorded = True


def keep_of(loaded: "LoadedSplit", settings: Any, split: str) -> str | None:
    """How the run's --fraction/--limit shrank the split scored, in words; None when it did not."""
    d = settings.data
    if split == "test" or (d.fraction >= 1.0 and not d.limit):
        return None
    return f"the {len(loaded)} {split} images the run used (fraction {d.fraction:g}, limit {d.limit or 'none'}, seed {settings.train.seed})"


def evaluation_record(
    run: Run, options: EvaluateOptions, predictor: "Predictor", loaded: "LoadedSplit",
    scores: "SegmentationScores", seconds: float, batch_size: int,
) -> dict[str, Any]:
    """What eval-<tag>.json holds: the figures and everything that decided them."""
    import torch

    from ..data.masks import DEFAULT_THRESHOLD

    model_info = predictor.info
    return {
        "run": str(run.path),
        "split": options.split,
        "images": len(scores),
        **scores.summary(),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(scores) / seconds, 3) if seconds > 0 else None,
        "settings": {
            "model": run.settings.model.name,
            "weights": model_info.weights,
            "model_file": str(options.model_file) if options.model_file else None,
            "runtime": model_info.backend,
            "runtime_choice": model_info.runtime_choice,
            "checkpoint_epoch": model_info.checkpoint_epoch,
            "checkpoint_weights": model_info.checkpoint_weights,
            "tta": options.tta,
            "tta_scales": list(predictor.scales),
            "at": options.at,
            "image_size": predictor.image_size,
            "precision": model_info.precision,
            "channels_last": model_info.channels_last,
            "batch_size": batch_size,
            "device": model_info.device,
            "data_dir": str(options.data_dir or run.dataset_dir),
            "subset": keep_of(loaded, run.settings, options.split),
            "threshold": model_info.threshold if options.at == AT_ORIGINAL else DEFAULT_THRESHOLD,
        },
        "skipped": loaded.skipped,
        "petseg_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def evaluate(run_dirs: list[Path], options: EvaluateOptions) -> list[Evaluation]:
    """Score each run on ``options.split``; returns one record per run (cli.py prints the table)."""
    check_options(options)
    if options.model_file is not None and len(run_dirs) != 1:
        raise UsageError(f"--model-file scores one run's exported file: pass the one run it was exported from, not {len(run_dirs)}")
    opened = [Run.open(run_dir) for run_dir in run_dirs]  # fail before any work when one of them is no run
    cache = SplitCache()
    return [evaluate_run(run, options, cache) for run in opened]
