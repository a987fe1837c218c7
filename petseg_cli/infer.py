"""Masks for any images: find the inputs, plan the outputs, run the model in batches, write PNGs.

Kept light on purpose: torch, numpy and PIL are imported only when there is work to do, and neither
albumentations nor matplotlib is ever imported, so `petseg infer one.jpg` costs little more than torch.
With an exported model (``--model-file model.onnx``) torch is not imported at all: onnxruntime runs it.
"""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from . import files, runs
from .console import err, info, out
from .errors import PetsegError, UsageError
from .model_metadata import ONNX_SUFFIX
from .settings import DEFAULTS, check_at_least, check_batch_size

if TYPE_CHECKING:
    import numpy as np

# What a directory or a glob contributes (an explicit file is read whatever its name).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
GLOB_CHARACTERS = frozenset("*?[")
DEFAULT_OUTPUT_DIR = Path("masks")
MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.jpg"
OVERLAY_QUALITY = 90
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


@dataclass
class Job:
    source: Path
    mask: Path
    overlay: Path | None


@dataclass
class InferResult:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def report_failure(result: InferResult, message: str) -> None:
    """One line on stderr (above the progress bar, if any), remembered for the exit code."""
    from rich.markup import escape
    from tqdm import tqdm

    result.failed.append(message)
    with tqdm.external_write_mode(file=sys.stderr):
        err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


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


def overlay_path(mask: Path) -> Path:
    return mask.with_name(mask.stem + OVERLAY_SUFFIX)


def plan_jobs(sources: list[Path], options: InferOptions, result: InferResult) -> list[Job]:
    """One job per source; a name clash or an existing output (without --overwrite) fails that source."""
    output = options.output
    names_a_file = output is not None and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir()
    if names_a_file and len(sources) > 1:  # -o x.jpg for a folder: an error, not a directory named x.jpg
        raise UsageError(f"-o {output} names one file but {len(sources)} images were given; pass a directory")
    if names_a_file and output.suffix.lower() == MASK_SUFFIX:
        masks = [output]
    else:
        directory = output if output is not None else DEFAULT_OUTPUT_DIR
        masks = [directory / f"{source.stem}{MASK_SUFFIX}" for source in sources]

    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for source, mask in zip(sources, masks):
        job = Job(source, mask, overlay_path(mask) if options.overlay else None)
        targets = [p for p in (job.mask, job.overlay) if p is not None]
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


def best_run(runs_dir: Path) -> tuple[Path, float]:
    """The run under ``runs_dir`` whose best.pth has the highest validation Dice."""
    found = []
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not (runs.is_run(run_dir) and (run_dir / runs.BEST).is_file()):
            continue
        try:
            history = runs.read_history(run_dir)
        except PetsegError:
            continue
        dice = (history.get("summary") or {}).get("best_val_dice")
        if dice is None:
            dice = max((e["val_dice"] for e in history["epochs"]), default=None)
        if dice is not None:
            found.append((run_dir, dice))
    if not found:
        raise PetsegError(f"no trained run under {runs_dir}/: train one with `petseg train`, or pass --run RUN")
    return max(found, key=lambda item: item[1])


# -- the model ------------------------------------------------------------------------------------

def batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def decode(batch: list[Job], result: InferResult) -> list[tuple[Job, "np.ndarray"]]:
    """Each job's image as a viewer shows it (EXIF orientation applied); an unreadable one fails alone."""
    from .data.images import DecodeError, read_rgb

    decoded = []
    for job in batch:
        try:
            decoded.append((job, read_rgb(job.source, exif_orientation=True)))
        except DecodeError as exc:
            report_failure(result, str(exc))
    return decoded


def save_png(f: IO[bytes], array: "np.ndarray") -> None:
    """An (H, W) uint8 array as a gray PNG (masks and probability maps: ``infer`` and ``serve`` alike)."""
    from PIL import Image

    Image.fromarray(array).save(f, format="PNG")


def write_png(path: Path, array: "np.ndarray") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_writer(path) as f:
        save_png(f, array)


def write_overlay(path: Path, image: "np.ndarray", mask: "np.ndarray") -> None:
    from .overlay import prediction_overlay

    with files.atomic_writer(path) as f:
        prediction_overlay(image, mask).save(f, format="JPEG", quality=OVERLAY_QUALITY)


def write_outputs(job: Job, image: "np.ndarray", probability: "np.ndarray", probs: bool) -> None:
    from .masks import pet_mask

    mask = pet_mask(probability)
    write_png(job.mask, probability if probs else mask)
    if job.overlay is not None:
        write_overlay(job.overlay, image, mask)


def write_failure(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be written, naming a file that stands where a directory should be."""
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        return f"{path}: cannot write: {blocking} is a file, not a directory"
    return f"{path}: cannot write ({exc.strerror or exc})"


def run_batch(batch: list[Job], predictor: Any, options: InferOptions, result: InferResult) -> None:
    """Decode, predict and write one batch; a file that cannot be read or written fails alone."""
    decoded = decode(batch, result)
    if not decoded:
        return
    probabilities = predictor.pet_probabilities([image for _, image in decoded], options.tta)
    for (job, image), probability in zip(decoded, probabilities):
        try:
            write_outputs(job, image, probability, options.probs)
            result.written.append(job.mask)
        except OSError as exc:
            report_failure(result, write_failure(job.mask, exc))


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


def load_predictor(options: InferOptions) -> Any:
    """An ``OnnxPredictor`` for an exported model (torch never imported), else a run's ``TorchPredictor``."""
    model_file = exported_model(options)
    if model_file is not None:
        from .onnx_model import OnnxPredictor

        predictor = OnnxPredictor.load(model_file, threads=options.threads, device=options.device)
        info(predictor.describe())
        return predictor

    from .machine.devices import resolve_device
    from .predict import TorchPredictor

    run_dir = options.run
    if run_dir is None:
        run_dir, dice = best_run(options.runs_dir)
        info(f"using run {run_dir} (best val Dice {dice:.4f})")
    device = resolve_device(options.device)
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    return TorchPredictor(run_dir, runs.DEFAULT_WEIGHTS, device)


def infer(inputs: list[str], options: InferOptions) -> InferResult:
    """Write a mask (and an overlay) for every readable image of ``inputs``; failures are reported, not raised."""
    check_batch_size(options.batch_size)
    if options.threads is not None:
        check_at_least("--threads", options.threads, 1)
    result = InferResult()
    jobs = plan_jobs(find_sources(inputs, options.recursive, result), options, result)
    if not jobs:
        return result

    from tqdm import tqdm

    predictor = load_predictor(options)
    with tqdm(total=len(jobs), desc="inferring", unit="image", leave=False, disable=None) as bar:
        for batch in batches(jobs, options.batch_size):
            run_batch(batch, predictor, options, result)
            bar.update(len(batch))
    for path in result.written:
        out.print(str(path), markup=False, soft_wrap=True)
    what = "probability maps" if options.probs else "masks"
    info(f"{what} written: {len(result.written)}" + (f", failed: {len(result.failed)}" if result.failed else ""))
    return result
