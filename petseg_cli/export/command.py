"""``petseg export``: a run's model as an ONNX file that carries what serving needs, checked against the
torch model before it is written.

The file is made in memory, opened as a ``predictor`` beside the run's own (torch, fp32), both given the
same random and (when the run's data is there) real photos, and only then written, atomically: a failed
check leaves nothing behind. (TorchScript export was dropped: no command could read it back.)
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..base import files
from ..base.errors import PetsegError, UsageError, first_line
from ..predict.metadata import CLASSES, INPUT_DESCRIPTION, INPUT_NAME, ONNX_SUFFIX, OUTPUT_DESCRIPTION, OUTPUT_NAME, ModelMetadata
from ..models import check_image_size
from ..config.settings import DEFAULTS, Settings, check_at_least, check_choice, require
from .quantize import DEFAULT_CALIBRATION, DEFAULT_MIN_AGREEMENT, check_int8_options
from ..run import DEFAULT_WEIGHTS, Run, ThresholdChoice, check_weights

if TYPE_CHECKING:
    import numpy as np

    from ..predict.predictor import Predictor

FORMATS = {"onnx": ONNX_SUFFIX}  # --format -> file suffix
DROPPED_FORMATS = {"torchscript": "TorchScript export was dropped (neither infer nor serve could read it); export to ONNX"}
DEFAULT_FORMAT = "onnx"
DEFAULT_STEM = "model"  # RUN/model.onnx
INT8_INFIX = ".int8"  # RUN/model.int8.onnx
MIN_OPSET = 18  # torch's exporter (torch.export based) writes opset 18 and later
DEFAULT_OPSET = 18  # the oldest it writes: the most onnxruntime versions load it
PIXEL_SCALE = 255.0  # 8-bit pixels / 255 -> the 0-1 scale the mean and std apply to
REQUIRED_AGREEMENT = 0.999  # share of pixels whose argmax must agree with the torch model's
# A dynamic model is traced at the run's size, or this if smaller: at 32 px the models' deepest feature
# maps are 1x1 or 2x2, and torch.export pins such a size (then fails on the dynamic shape asked for).
TRACE_SIZE = 128
STATIC_BATCH = 1  # a static model's batch dimension (a dynamic one is traced at 2)
RANDOM_IMAGES = 3  # random-pixel images in the self-check (one of them not square, when dynamic)
REAL_IMAGES = 4  # images of the run's validation split, when its data directory is there
CHECK_SEED = 0
EXPORT_INSTALL = "pip install 'petseg[onnx]'  (onnx, onnxscript and onnxruntime)"


@dataclass
class ExportOptions:
    output: Path | None = None  # None: RUN/model.onnx
    format: str = DEFAULT_FORMAT
    weights: str = DEFAULT_WEIGHTS
    image_size: int | None = None  # None: the run's training size
    dynamic: bool = True  # any batch size and any height and width that are multiples of 32
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    overwrite: bool = False
    device: str = DEFAULTS.train.device  # where the self-check's reference (the run's torch model) runs
    int8: bool = False  # write the int8 model (quantize.py) instead of the fp32 one
    calibration: int = DEFAULT_CALIBRATION  # --int8: training photos to calibrate on
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # --int8: the self-check's bar (share of validation pixels)


@dataclass(frozen=True)
class SelfCheck:
    random_images: int
    real_images: int
    pixels: int
    max_abs_diff: float  # largest |log-probability difference|
    agreement: float  # share of pixels whose argmax equals the torch model's
    runtime: str  # what ran the exported file, e.g. "onnxruntime CPUExecutionProvider"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    bytes: int
    metadata: ModelMetadata
    check: SelfCheck
    dynamic: bool
    opset: int
    seconds: float
    int8: Any = None  # quantize.Int8Report for --int8
    threshold: ThresholdChoice | None = None  # the mask threshold the file holds, and why
    quantized_from: Path | None = None  # --int8: the earlier fp32 export it quantized, instead of exporting again

    def report(self) -> list[str]:
        m, c = self.metadata, self.check
        shape = "dynamic batch, height and width (multiples of 32)" if self.dynamic else f"static 1x3x{m.image_size}x{m.image_size}"
        opset = f", opset {self.opset}"
        real = f" and {c.real_images} real" if c.real_images else " (no real images: the run's data directory is not here)"
        return [
            f"exported {self.path} ({self.format}{opset}, {m.precision}, {shape}; {self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s)",
            f"model {m.model} {json.dumps(m.model_args)}, trained at {m.image_size} px, best val Dice "
            + (f"{m.best_val_dice:.4f}" if m.best_val_dice is not None else "unknown")
            + f", weights {m.weights_file} sha256 {m.weights_sha256[:12]}…",
            f"self-check on {c.random_images} random{real} images with {c.runtime}: largest |log-probability "
            f"difference| {c.max_abs_diff:.3g}, argmax agrees on {c.agreement:.4%} of {c.pixels:,} pixels",
        ] + self.quantized_from_lines() + ([f"masks: {self.threshold.describe()}"] if self.threshold else []) + (
            self.int8.lines() if self.int8 else []
        )

    def quantized_from_lines(self) -> list[str]:
        if self.quantized_from is None:
            return []
        return [f"quantized {self.quantized_from} (exported earlier from the same weights with the same options; "
                "the self-check above ran on it)"]


def input_normalization(settings: Settings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) on the 0-1 scale the run's model was trained with: the one place export reads them."""
    from ..data.transforms import NORMALIZATIONS

    mean, std = NORMALIZATIONS[settings.data.normalization]
    return tuple(mean), tuple(std)


def check_options(options: ExportOptions) -> None:
    if options.format in DROPPED_FORMATS:
        raise UsageError(f"--format {options.format}: {DROPPED_FORMATS[options.format]}")
    check_choice("--format", options.format, tuple(FORMATS))
    check_weights(options.weights)
    if options.image_size is not None:
        check_image_size(options.image_size)
    check_at_least("--opset", options.opset, MIN_OPSET)
    require(not options.int8 or not options.fp16, "--int8 and --fp16 are two exports: choose one")
    check_int8_options(options.calibration, options.min_agreement)


def output_path(run_dir: Path, options: ExportOptions) -> Path:
    """Where the file goes; refused when it exists (without --overwrite) or cannot be written."""
    stem = DEFAULT_STEM + (INT8_INFIX if options.int8 else "")
    path = options.output if options.output is not None else run_dir / (stem + FORMATS[options.format])
    if path.is_dir():
        raise UsageError(f"-o {path} is a directory; name the file, e.g. {path / (DEFAULT_STEM + FORMATS[options.format])}")
    if path.exists() and not options.overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise PetsegError(files.write_failure(path, exc)) from None
    return path


def require_exporter() -> None:
    """Fail in one line, with the install command, when the ONNX tools are missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise PetsegError(f"export to ONNX needs {', '.join(missing)}: {EXPORT_INSTALL}")


def build_metadata(run: Run, checkpoint_args: dict[str, Any] | None, options: ExportOptions, threshold: float) -> ModelMetadata:
    settings, weights_path = run.settings, run.weights_file(options.weights)
    mean, std = input_normalization(settings)
    return ModelMetadata(
        model=settings.model.name,
        model_args=dict(checkpoint_args or {"cbam": settings.model.cbam}),
        image_size=options.image_size or settings.data.image_size,
        mean=mean,
        std=std,
        scale=PIXEL_SCALE,
        classes=CLASSES,
        petseg_version=__version__,
        best_val_dice=run.best_val_dice,
        weights_sha256=files.sha256(weights_path),
        weights_file=weights_path.name,
        run=run.name,
        precision="fp16" if options.fp16 else "fp32",
        threshold=threshold,
    )


# -- the self-check's inputs ----------------------------------------------------------------------

def real_images(data_dir: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` decodable images of the run's validation split; none when its data is not here."""
    from ..data.images import DecodeError, read_rgb
    from ..data.oxford_pet import split_samples

    try:
        samples = split_samples(data_dir, "val")
    except PetsegError:
        return []
    found = []
    for sample in samples:
        try:
            found.append(read_rgb(sample.image_path))
        except DecodeError:
            continue
        if len(found) == count:
            break
    return found


def check_batches(data_dir: Path, size: int, dynamic: bool) -> tuple[list[np.ndarray], int, int]:
    """(N, H, W, 3) uint8 batches to compare on, and how many random and real images they hold."""
    import numpy as np

    from ..data.masks import model_batch

    rng = np.random.default_rng(CHECK_SEED)
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(RANDOM_IMAGES)]
    if dynamic:  # a batch of two, and one image that is not square
        batches = [np.stack(noise[:-1]), rng.integers(0, 256, (1, size + 32, size, 3), dtype=np.uint8)]
    else:
        batches = [image[None] for image in noise]
    real = real_images(data_dir, REAL_IMAGES)
    if real:
        batches += [model_batch(real, size)] if dynamic else [model_batch([image], size) for image in real]
    return batches, RANDOM_IMAGES, len(real)


def compare(reference: "Predictor", candidate: "Predictor", batches: list[np.ndarray]) -> tuple[float, float, int]:
    """Largest absolute log-probability difference, share of pixels whose argmax agrees, and the pixel count."""
    import numpy as np

    diff, agree, pixels = 0.0, 0, 0
    for batch in batches:
        r, c = reference.log_probabilities(batch), candidate.log_probabilities(batch)
        diff = max(diff, float(np.abs(r - c).max()))
        agree += int((r.argmax(1) == c.argmax(1)).sum())
        pixels += r.shape[0] * r.shape[2] * r.shape[3]
    return diff, agree / pixels, pixels


# -- the formats ----------------------------------------------------------------------------------

def quietly(function: Callable[[], Any]) -> Any:
    """Run an exporter without its warnings and log lines (deprecations, skipped torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return function()
    finally:
        logger.setLevel(level)


def earlier_export(run_dir: Path, metadata: ModelMetadata, options: ExportOptions) -> tuple[Path, bytes] | None:
    """The run's fp32 file (RUN/model.onnx) and its bytes when what it carries says it is the model this
    export would make: the same weights (by checksum), size, threshold and petseg version, fp32, the same
    opset and the same static or dynamic shape. ``--int8`` quantizes it rather than running torch's
    exporter again (the slowest step); it still goes through the self-check against torch. None when
    it is absent, unreadable or anything differs."""
    import onnx
    from google.protobuf.message import DecodeError

    path = run_dir / (DEFAULT_STEM + FORMATS[options.format])
    try:
        payload = path.read_bytes()
        proto = onnx.load_model_from_string(payload)
        carried = ModelMetadata.from_strings({p.key: p.value for p in proto.metadata_props}, str(path))
    except (OSError, DecodeError, PetsegError):  # unreadable, not ONNX, or without petseg's metadata
        return None
    opset = {entry.domain: entry.version for entry in proto.opset_import}.get("")
    shapes = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    if [len(shape) for shape in shapes] != [4]:  # not one image batch in: no file of to_onnx's
        return None
    [shape] = shapes
    # A dynamic export names its batch, height and width; a static one fixes them (to_onnx).
    dynamic = all(isinstance(shape[axis], str) for axis in (0, 2, 3))
    static = shape == [STATIC_BATCH, 3, metadata.image_size, metadata.image_size]
    same_model = replace(carried, run=metadata.run) == metadata  # a renamed or copied run's file is its own
    if not same_model or opset != options.opset or not (dynamic if options.dynamic else static):
        return None
    return path, payload


def to_onnx(model: Any, metadata: ModelMetadata, options: ExportOptions) -> bytes:
    import torch

    from ..models import SIZE_MULTIPLE

    dtype = torch.float16 if options.fp16 else torch.float32
    model = model.to(dtype)
    size = max(metadata.image_size, TRACE_SIZE) if options.dynamic else metadata.image_size
    example = torch.zeros(2 if options.dynamic else STATIC_BATCH, 3, size, size, dtype=dtype)
    dynamic_shapes = None
    if options.dynamic:
        Dim = torch.export.Dim
        dynamic_shapes = ({0: Dim("batch"), 2: SIZE_MULTIPLE * Dim("height_32"), 3: SIZE_MULTIPLE * Dim("width_32")},)
    try:
        program = quietly(
            lambda: torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=options.opset, dynamic_shapes=dynamic_shapes, verbose=False,
            )
        )
    except Exception as exc:  # the exporter's errors are many types; one line is what the user needs
        raise PetsegError(f"torch's ONNX exporter failed: {first_line(exc)}") from None
    proto = program.model_proto
    proto.doc_string = f"petseg {metadata.model}. Input {INPUT_NAME!r}: {INPUT_DESCRIPTION}. Output {OUTPUT_NAME!r}: {OUTPUT_DESCRIPTION}."
    for key, value in metadata.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def model_logits(model: Any, batch: np.ndarray) -> np.ndarray:
    """The torch model's logits for a normalised float32 (N, 3, H, W) batch (int8's reference)."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def export(run_dir: Path, options: ExportOptions) -> ExportResult:
    """Export ``run_dir``'s model, check it against the torch model, and write it; return what was done.
    The file holds the mask threshold tuned for its weights without TTA, else the default."""
    from ..predict.onnx_backend import OnnxPredictor
    from ..predict.predictor import open_predictor

    started = time.perf_counter()
    check_options(options)
    run = Run.open(run_dir)  # a path that is no run fails here, before anything is made
    path = output_path(run_dir, options)
    require_exporter()
    reference = open_predictor(run, options.weights, options.device, precision="fp32")
    model, checkpoint = run.load_model(options.weights)  # on the CPU, for the exporter
    model = model.float().eval()
    threshold = run.threshold_for(options.weights, tta=False)
    metadata = build_metadata(run, checkpoint.get("model_args"), options, threshold.value)
    batches, random_count, real_count = check_batches(run.dataset_dir, metadata.image_size, options.dynamic)
    earlier = earlier_export(run_dir, metadata, options) if options.int8 else None
    payload = earlier[1] if earlier else to_onnx(model, metadata, options)
    try:
        candidate = OnnxPredictor.load(payload, device="cpu", name=f"the exported model ({path.name})")
        diff, agreement, pixels = compare(reference, candidate, batches)
    except Exception as exc:  # onnxruntime's own exception types
        raise PetsegError(f"the exported model does not run: {first_line(exc)}") from None
    check = SelfCheck(random_count, real_count, pixels, diff, agreement, f"onnxruntime {candidate.providers[0]}")
    if not agreement >= REQUIRED_AGREEMENT:
        raise PetsegError(
            f"self-check failed, nothing written: the exported model's argmax agrees with torch's on "
            f"{agreement:.4%} of {pixels:,} pixels (at least {REQUIRED_AGREEMENT:.1%} needed; largest "
            f"|log-probability difference| {diff:.3g})"
        )
    int8 = None
    if options.int8:  # the checked fp32 model, quantized and checked again (quantize.py)
        from .quantize import int8_model

        payload, metadata, int8 = int8_model(
            payload, metadata, run.dataset_dir, lambda batch: model_logits(model, batch),
            options.calibration, options.min_agreement,
        )
    try:
        with files.atomic_writer(path) as f:
            f.write(payload)
    except OSError as exc:
        raise PetsegError(files.write_failure(path, exc)) from None
    seconds = time.perf_counter() - started
    return ExportResult(
        path, options.format, len(payload), metadata, check, options.dynamic, options.opset, seconds, int8, threshold,
        earlier[0] if earlier else None,
    )
