"""``petseg infer``: find the inputs, plan the outputs, predict in batches (a ``Segmenter``, the one that
``from petseg_cli import Segmenter`` gives: this command is a thin caller of it), write the
files (``outputs``); returns what was written and what failed, which cli.py prints.

Kept light on purpose: torch, numpy and PIL are imported only when there is work to do, and neither
albumentations nor matplotlib is ever imported, so `petseg infer one.jpg` costs little more than torch.
With an exported model (``--model-file model.onnx``) torch is not imported at all: onnxruntime runs it.
"""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..base import files
from ..base.console import error, info, warn
from ..base.errors import UsageError, malformed
from ..predict.metadata import ONNX_SUFFIX
from ..config.settings import DEFAULTS, RUNTIMES, check_at_least, check_batch_size, check_choice, check_threshold

if TYPE_CHECKING:
    import numpy as np

    from ..predict.segmenter import Segmenter

# What a directory or a glob contributes (an explicit file is read whatever its name).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
GLOB_CHARACTERS = frozenset("*?[")
DEFAULT_OUTPUT_DIR = Path("masks")
MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.jpg"
CUTOUT_SUFFIX = "_cutout.png"
DEFAULT_BATCH_SIZE = 8


@dataclass
class InferOptions:
    output: Path | None = None  # a .png file for one image, else a directory (default ./masks)
    run: Path | None = None  # None: the run under runs_dir with the best validation Dice
    runs_dir: Path = Path(DEFAULTS.train.runs_dir)
    overlay: bool = False
    probs: bool = False
    overwrite: bool = False
    recursive: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = DEFAULTS.train.device
    tta: bool = False
    model_file: Path | None = None  # an exported .onnx model, served by onnxruntime without torch
    threads: int | None = None  # threads for the model; None: the machine's usable cores
    weights: str | None = None  # a run's best or last weights; None: best
    precision: str | None = None  # None: what the run recorded (an exported file: its own)
    cutout: bool = False  # also <stem>_cutout.png: the pet on transparency (or on ``background``)
    background: str | None = None  # a colour: the cut-out is RGB on it instead of RGBA
    coco: Path | None = None  # one COCO results JSON for every input, masks as compressed RLE
    threshold: float | None = None  # None: the run's recorded one (chosen on val), else 0.5
    runtime: str = DEFAULTS.serve.runtime  # what runs an exported file: onnxruntime, openvino or auto


@dataclass
class Job:
    source: Path
    mask: Path
    overlay: Path | None
    cutout: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.mask, self.overlay, self.cutout) if p is not None]


@dataclass
class InferResult:
    written: list[Path] = field(default_factory=list)  # every file written: masks, overlays, cut-outs
    images: int = 0  # the images whose files were all written
    failed: list[str] = field(default_factory=list)
    probs: bool = False  # probability maps were written instead of masks
    coco: list[dict] = field(default_factory=list)  # the COCO results entries, in input order
    coco_file: Path | None = None  # where they were written

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def report_failure(result: InferResult, message: str) -> None:
    """One line on stderr (above the progress bar, if any), remembered for the exit code."""
    from tqdm import tqdm

    result.failed.append(message)
    with tqdm.external_write_mode(file=sys.stderr):
        error(message)


# -- inputs and outputs ---------------------------------------------------------------------------

def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_input(text: str, recursive: bool) -> list[Path]:
    """A file as is; a directory's images (all levels with ``recursive``); a glob's images. [] if none."""
    path = Path(text)
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(p for p in found if p.is_file() and is_image_name(p))
    if path.exists() or not GLOB_CHARACTERS & set(text):
        return [path]
    return sorted(p for p in map(Path, glob.glob(text, recursive=recursive)) if p.is_file() and is_image_name(p))


def find_sources(inputs: list[str], recursive: bool, result: InferResult) -> list[Path]:
    sources: dict[Path, None] = {}  # ordered, without repeats
    for text in inputs:
        found = expand_input(text, recursive)
        if not found:
            report_failure(result, f"{text}: no images found")
        sources.update(dict.fromkeys(found))
    return list(sources)


def beside(mask: Path, suffix: str) -> Path:
    """``masks/cat.png`` -> ``masks/cat_overlay.jpg`` and the like."""
    return mask.with_name(mask.stem + suffix)


def plan_jobs(sources: list[Path], options: InferOptions, result: InferResult) -> list[Job]:
    """One job per source; a name clash or an existing output (without --overwrite) fails that source."""
    output = options.output
    names_a_file = output is not None and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir()
    if names_a_file and len(sources) > 1:  # -o x.jpg for a folder: an error, not a directory named x.jpg
        raise UsageError(f"-o {output} names one file but {len(sources)} images were given; pass a directory")
    if names_a_file and output.suffix.lower() != MASK_SUFFIX:  # a mask is a PNG: never a directory named m.jpg
        raise UsageError(f"-o {output}: a mask is written as a PNG; name a {MASK_SUFFIX} file or a directory")
    if names_a_file:
        masks = [output]
    else:
        directory = output if output is not None else DEFAULT_OUTPUT_DIR
        masks = [directory / f"{source.stem}{MASK_SUFFIX}" for source in sources]

    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for source, mask in zip(sources, masks):
        job = Job(
            source, mask, beside(mask, OVERLAY_SUFFIX) if options.overlay else None,
            beside(mask, CUTOUT_SUFFIX) if options.cutout or options.background else None,
        )
        targets = job.outputs
        clash = next((claimed[p] for p in targets if p in claimed), None)
        existing = next((p for p in targets if p.exists()), None)
        if clash is not None:
            report_failure(result, f"{source}: its output {mask} is also {clash}'s; run them separately")
        elif existing is not None and not options.overwrite:
            report_failure(result, f"{source}: {existing} already exists; pass --overwrite to replace it")
        else:
            claimed.update((p, source) for p in targets)
            jobs.append(job)
    return jobs


# -- the model ------------------------------------------------------------------------------------

def batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def decode(batch: list[Job], result: InferResult) -> list[tuple[Job, "np.ndarray"]]:
    """Each job's image as a viewer shows it (EXIF orientation applied); an unreadable one fails alone."""
    from ..data.images import DecodeError, read_rgb

    decoded = []
    for job in batch:
        try:
            decoded.append((job, read_rgb(job.source, exif_orientation=True)))
        except DecodeError as exc:
            report_failure(result, str(exc))
    return decoded


@dataclass(frozen=True)
class Writing:
    """What to write for each photo, decided once: the threshold and the cut-out's background."""

    probs: bool
    threshold: float
    background: tuple[int, int, int] | None
    coco: bool


def write_outputs(job: Job, image: "np.ndarray", probability: "np.ndarray", how: Writing) -> "np.ndarray":
    """Write the job's files; returns its 0/255 mask."""
    from ..data.masks import pet_mask
    from ..predict.outputs import write_cutout, write_overlay, write_png

    mask = pet_mask(probability, how.threshold)
    write_png(job.mask, probability if how.probs else mask)
    if job.overlay is not None:
        write_overlay(job.overlay, image, mask)
    if job.cutout is not None:
        write_cutout(job.cutout, image, probability, how.background)
    return mask


@dataclass
class Prepared:
    """A batch ready for the model: its jobs, the photos that decoded, and those at the model's size."""

    jobs: list[Job]
    decoded: list[tuple[Job, "np.ndarray"]]
    batch: "np.ndarray | None"  # None when no photo of the batch decoded


def prepare(batch: list[Job], size: int, result: InferResult) -> Prepared:
    """Decode a batch and resize it to the model's size (a thread of its own, while the model runs)."""
    from ..data.masks import model_batch

    decoded = decode(batch, result)
    return Prepared(batch, decoded, model_batch([image for _, image in decoded], size) if decoded else None)


def predict(prepared: Prepared, segmenter: "Segmenter") -> "np.ndarray | None":
    """The 8-bit pet probabilities at the model's size (the calling thread: the model's own)."""
    return None if prepared.batch is None else segmenter.batch_probabilities(prepared.batch)


def finish(prepared: Prepared, pet_8bit: "np.ndarray | None", how: Writing, result: InferResult) -> None:
    """Resize each probability back to its photo and write its files (a thread of its own); a file that
    cannot be written fails alone."""
    from ..data.masks import at_image_sizes
    from ..predict.outputs import coco_result

    if pet_8bit is None:
        return
    probabilities = at_image_sizes(pet_8bit, [image.shape for _, image in prepared.decoded])
    for (job, image), probability in zip(prepared.decoded, probabilities):
        try:
            mask = write_outputs(job, image, probability, how)
            result.written.extend(job.outputs)
            result.images += 1
        except OSError as exc:
            report_failure(result, files.write_failure(job.mask, exc))
            continue
        if how.coco:
            result.coco.append(coco_result(len(result.coco) + 1, str(job.source), probability, mask))


def exported_model(options: InferOptions) -> Path | None:
    """The .onnx file to serve: ``--model-file``, or ``--run`` naming a file rather than a run directory."""
    if options.model_file is not None and options.run is not None:
        raise UsageError("pass --model-file FILE or --run RUN, not both")
    if options.model_file is not None:
        return options.model_file
    run = options.run
    if run is not None and run.suffix.lower() == ONNX_SUFFIX:
        return run
    if run is not None and run.is_file():
        raise UsageError(f"--run takes a run directory or an exported {ONNX_SUFFIX} file; {run} is neither")
    return None


def load_segmenter(options: InferOptions) -> "Segmenter":
    """The model to run: an exported file (torch never imported), the run named, else the default run;
    with the threshold of ``--threshold``, else the run's own."""
    from ..predict.segmenter import Segmenter

    source = exported_model(options) or options.run
    if source is None:
        from ..run import default_run

        source, why, warnings = default_run(options.runs_dir)
        for warning in warnings:
            warn(warning)
        info(why)
    segmenter = Segmenter.load(
        source, weights=options.weights, device=options.device, precision=options.precision, threads=options.threads,
        threshold=options.threshold, tta=options.tta, runtime=options.runtime,
    )
    info(segmenter.describe())
    if segmenter.info.runtime_choice:
        info(segmenter.info.runtime_choice)
    return segmenter


def writing(options: InferOptions, segmenter: "Segmenter") -> Writing:
    if options.threshold is None and not options.probs:
        info(f"masks: pet where the probability reaches the {segmenter.info.threshold_line()}; --threshold sets another")
    return Writing(options.probs, segmenter.threshold, background_colour(options.background), options.coco is not None)


def background_colour(text: str | None) -> tuple[int, int, int] | None:
    from ..predict.outputs import parse_colour

    if text is None:
        return None
    try:
        return parse_colour(text)
    except ValueError:
        raise malformed("--background", "a colour: #rrggbb, #rgb or a name", "#ffffff or white", text) from None


def check_options(options: InferOptions) -> None:
    check_batch_size(options.batch_size)
    check_choice("--runtime", options.runtime, RUNTIMES)
    if options.threads is not None:
        check_at_least("--threads", options.threads, 1)
    if options.threshold is not None:
        check_threshold(options.threshold)
    background_colour(options.background)
    if options.coco is not None and (options.coco.is_dir() or options.coco.exists() and not options.overwrite):
        what = "is a directory" if options.coco.is_dir() else "already exists; pass --overwrite to replace it"
        raise UsageError(f"--coco {options.coco} {what}")


def write_coco(result: InferResult, path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, json.dumps(result.coco) + "\n")
    result.coco_file = path


def infer(inputs: list[str], options: InferOptions) -> InferResult:
    """Write a mask (and an overlay, a cut-out) for every readable image of ``inputs``, and the COCO file;
    failures are reported, not raised."""
    check_options(options)
    result = InferResult(probs=options.probs)
    jobs = plan_jobs(find_sources(inputs, options.recursive, result), options, result)
    if not jobs:
        return result

    from tqdm import tqdm

    segmenter = load_segmenter(options)
    how = writing(options, segmenter)
    from ..predict.pipeline import pipelined

    with tqdm(total=len(jobs), desc="inferring", unit="image", leave=False, disable=None) as bar:

        def finish_and_count(prepared: Prepared, pet_8bit: "np.ndarray | None") -> None:
            finish(prepared, pet_8bit, how, result)
            bar.update(len(prepared.jobs))

        pipelined(
            batches(jobs, options.batch_size), lambda batch: prepare(batch, segmenter.image_size, result),
            lambda prepared: predict(prepared, segmenter), finish_and_count,
        )
    if options.coco is not None:
        try:
            write_coco(result, options.coco)
        except OSError as exc:
            report_failure(result, files.write_failure(options.coco, exc))
    return result
