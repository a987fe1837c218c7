"""int8 models: an exported fp32 ONNX model quantized with onnxruntime's static quantization, calibrated
on the run's own photos, chosen by measurement, and checked against the fp32 model before it is kept.

The steps (``int8_model``), all on the CPU, all with onnxruntime's tools (``onnxruntime.quantization``):

1. ``quant_pre_process``: shape inference and graph optimisation of the fp32 model, as recommended.
2. Calibration photos: a seeded choice of N (default 64) photos of the run's *training* split, resized
   and normalised exactly as inference does (``masks.model_batch``, ``onnx_predictor.normalize``).
3. The search, kept cheap: the first ``SEARCH_IMAGES`` calibration photos calibrate each method of
   ``SEARCH_METHODS``; each candidate is quantized (QDQ, per-channel int8 weights, uint8 activations) and
   scored by pixel agreement with the fp32 model on the run's *validation* photos, and timed there (the
   same runs). The best method is kept; then each group of layers that often loses most (the first conv,
   the last 1x1 head, CBAM's sigmoid gates) is tried in fp32 (``nodes_to_exclude``). A group stays fp32
   when the model without it misses the agreement bar and it raises agreement, or when it raises
   agreement by at least ``SEARCH_GAIN`` and costs at most ``SEARCH_SLOWDOWN`` of the speed: an fp32
   layer amid int8 ones adds a dequantize-quantize pair and can undo the int8 speed-up. Ranges are
   calibrated once per method (onnxruntime's calibration cache).
4. The chosen recipe is calibrated on all N photos and quantized.
5. The self-check: on the validation photos, the int8 model's argmax against the fp32 model's (pixel
   agreement) and each image's Dice against its trimap, int8 minus fp32. The model is returned only
   when agreement >= ``min_agreement`` (default 99%); otherwise a PetsegError says by how much it missed.

Everything measured is in the returned ``Int8Report`` and in the metadata (``precision`` "int8",
``quantization``: method, layers kept in fp32, calibration, the candidates tried, the self-check).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..base.errors import PetsegError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..predict.metadata import ModelMetadata

DEFAULT_CALIBRATION = 64  # training photos that calibrate the activation ranges
DEFAULT_MIN_AGREEMENT = 0.99  # share of validation pixels whose argmax must equal the fp32 model's
CALIBRATION_SEED = 0
SEARCH_IMAGES = 16  # of the calibration photos, those the search calibrates on
SEARCH_METHODS = ("minmax", "percentile")  # entropy is offered by onnxruntime too, but its search is slow
SEARCH_GAIN = 0.0005  # a layer group stays fp32 only when that raises agreement by 0.05 points or more
SEARCH_SLOWDOWN = 0.05  # ... and costs at most 5% of the images per second (unless needed to pass the bar)
CHECK_IMAGES = 32  # validation photos (at most) the search and the self-check measure on
BATCH = 4  # images per calibration and check batch: bounds the memory the calibrator holds
QUANTIZATION_FORMAT = "QDQ, per-channel symmetric int8 weights, uint8 activations"


@dataclass(frozen=True)
class Candidate:
    method: str
    fp32_layers: tuple[str, ...]  # layer groups kept in fp32
    agreement: float  # with the fp32 model on the validation photos
    images_per_second: float  # on those photos, in this process (a relative figure: candidates are compared)


@dataclass(frozen=True)
class Int8Check:
    images: int
    pixels: int
    agreement: float  # share of pixels whose argmax equals the fp32 model's
    dice_images: int  # images with a trimap, whose Dice was compared
    mean_dice_difference: float  # mean over images of Dice(int8) - Dice(fp32), against the trimap
    max_abs_dice_difference: float
    min_agreement: float


@dataclass(frozen=True)
class Int8Report:
    method: str
    fp32_layers: tuple[str, ...]  # the groups kept in fp32 ("first conv", "head", "sigmoid gates")
    fp32_nodes: tuple[str, ...]  # their ONNX node names
    calibration_images: int
    search_images: int
    candidates: tuple[Candidate, ...]
    check: Int8Check
    fp32_bytes: int

    def lines(self) -> list[str]:
        c = self.check
        kept = ", ".join(self.fp32_layers) or "none"
        tried = "; ".join(f"{x.method}{' + fp32 ' + ', '.join(x.fp32_layers) if x.fp32_layers else ''} {x.agreement:.4%} "
                          f"at {x.images_per_second:.1f} images/s" for x in self.candidates)
        return [
            f"int8 ({QUANTIZATION_FORMAT}): {self.method} calibration on {self.calibration_images} training photos; "
            f"kept in fp32: {kept}",
            f"search on {self.search_images} calibration photos, agreement on {c.images} validation photos: {tried}",
            f"int8 self-check on {c.images} validation photos: argmax agrees with the fp32 model on {c.agreement:.4%} "
            f"of {c.pixels:,} pixels (at least {c.min_agreement:.2%} needed); per-image Dice int8 - fp32: mean "
            f"{c.mean_dice_difference:+.4f}, largest |difference| {c.max_abs_dice_difference:.4f} ({c.dice_images} trimaps)",
        ]


def check_int8_options(calibration: int, min_agreement: float) -> None:
    if calibration < 1:
        raise UsageError(f"--calibration must be at least 1, got {calibration}")
    if not 0 < min_agreement <= 1:
        raise UsageError(f"--min-agreement must be above 0 and at most 1 (a share of pixels), got {min_agreement}")


# -- photos ---------------------------------------------------------------------------------------

def photos(data_dir: Path, split: str, count: int, seed: int) -> list[tuple[np.ndarray, Any]]:
    """A seeded choice of ``count`` decodable (RGB image, sample) pairs of ``split``."""
    from ..data.images import DecodeError, read_rgb
    from ..data.oxford_pet import part_of, split_samples

    found = []
    for sample in part_of(split_samples(data_dir, split), count, seed):
        try:
            found.append((read_rgb(sample.image_path), sample))
        except DecodeError:
            continue
    if not found:
        raise PetsegError(f"--int8 needs photos of the run's {split} split to calibrate and check on; none could be read in {data_dir}")
    return found


def batches(images: list[np.ndarray], metadata: ModelMetadata, batch: int = BATCH) -> list[np.ndarray]:
    """Images -> normalised float32 (N, 3, S, S) batches of ``batch``, exactly as inference prepares them."""
    from ..data.masks import model_batch
    from ..predict.onnx_backend import normalize

    size = metadata.image_size
    return [normalize(model_batch(images[i : i + batch], size), metadata) for i in range(0, len(images), batch)]


def truth_masks(samples: list[Any], size: int) -> list[np.ndarray | None]:
    """Each sample's pet mask at the model's size (nearest), or None when its trimap cannot be read."""
    from ..data.images import DecodeError, read_label, resize
    from ..data.oxford_pet import trimap_to_mask

    masks: list[np.ndarray | None] = []
    for sample in samples:
        try:
            masks.append(trimap_to_mask(resize(read_label(sample.trimap_path), (size, size), nearest=True)) > 0)
        except (DecodeError, OSError):
            masks.append(None)
    return masks


def make_reader(input_name: str, data: list[np.ndarray]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over prepared batches; ranges let the calibrator take one
    batch at a time (``CalibStridedMinMax``), so its memory holds one batch's activations."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start, self.end, self.position = 0, len(data), 0

        def __len__(self) -> int:
            return len(data)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.position = start_index, end_index, start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= min(self.end, len(data)):
                return None
            self.position += 1
            return {input_name: data[self.position - 1]}

    return Reader()


# -- the model and its layers ---------------------------------------------------------------------

def layer_groups(model: Any) -> dict[str, list[str]]:
    """The node groups that quantization tends to hurt most, by name, among those this graph has."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    sigmoids = [n.name for n in model.graph.node if n.op_type == "Sigmoid"]
    groups = {"first conv": convs[:1], "head": convs[-1:], "sigmoid gates": sigmoids}
    return {name: nodes for name, nodes in groups.items() if nodes}


@contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's quantization tools print progress and log advice; a command's output is its own."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def as_petseg_errors() -> Iterator[None]:
    """onnxruntime's and onnx's own exception types, while they quantize, as one line."""
    try:
        yield
    except Exception as exc:
        text = str(exc).strip()
        raise PetsegError(f"int8 quantization failed: {text.splitlines()[0] if text else type(exc).__name__}") from None


class Quantizer:
    """The pre-processed fp32 model in a scratch directory, quantized on demand."""

    def __init__(self, fp32_payload: bytes, scratch: Path) -> None:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.scratch = scratch
        self.fp32 = scratch / "fp32.onnx"
        self.fp32.write_bytes(fp32_payload)
        self.prepared = scratch / "prepared.onnx"
        # Symbolic shape inference (meant for transformers) fails on these dynamic conv graphs, and on failing
        # it saves the model into the working directory: ONNX's own shape inference is what they need.
        with quiet():
            quant_pre_process(str(self.fp32), str(self.prepared), skip_symbolic_shape=True)
        model = onnx.load(str(self.prepared))
        self.input_name = model.graph.input[0].name
        # A static export's batch dimension is a number (calibration and checks must feed exactly that many
        # images at once); a dynamic one's is a name, and dim_value is then 0.
        self.fixed_batch: int | None = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or None
        self.groups = layer_groups(model)
        self.made = 0

    def quantize(self, method: str, fp32_layers: tuple[str, ...], data: list[np.ndarray], cache: str) -> bytes:
        """The int8 model for ``method`` with ``fp32_layers`` kept in fp32; ranges come from ``cache``
        (a name in the scratch directory) when it was calibrated before, else from ``data``."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        self.made += 1
        output = self.scratch / f"int8-{self.made}.onnx"
        cache_path = self.scratch / f"ranges-{cache}-{method}.json"
        with quiet():
            quantize_static(
                str(self.prepared), str(output), make_reader(self.input_name, data),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=[node for group in fp32_layers for node in self.groups[group]],
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                extra_options={"CalibStridedMinMax": 1}, calibration_cache_path=str(cache_path),
            )
        payload = output.read_bytes()
        output.unlink()
        return payload


def logits_of(payload: bytes, data: list[np.ndarray]) -> list[np.ndarray]:
    return timed_logits(payload, data)[0]


def timed_logits(payload: bytes, data: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """The model's logits for each batch, and its images per second over them (after one warm-up batch)."""
    import time

    from ..predict.onnx_backend import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: data[0][:1]})
    start = time.perf_counter()
    logits = [session.run(None, {name: batch})[0] for batch in data]
    return logits, sum(len(b) for b in data) / max(time.perf_counter() - start, 1e-9)


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    same = sum(int((r.argmax(1) == c.argmax(1)).sum()) for r, c in zip(reference, candidate))
    return same / sum(r.shape[0] * r.shape[2] * r.shape[3] for r in reference)


# -- the search and the check ---------------------------------------------------------------------

def search(
    quantizer: Quantizer, data: list[np.ndarray], val: list[np.ndarray], reference: list[np.ndarray], min_agreement: float
) -> tuple[list[Candidate], Candidate]:
    """The candidates tried, in order, and the chosen one: the method with the best agreement (the
    earlier on a tie), then each layer group in fp32 where ``keeps_fp32`` says it pays."""

    def measure(method: str, layers: tuple[str, ...]) -> Candidate:
        logits, speed = timed_logits(quantizer.quantize(method, layers, data, "search"), val)
        return Candidate(method, layers, agreement(reference, logits), speed)

    tried = [measure(method, ()) for method in SEARCH_METHODS]
    best = max(tried, key=lambda c: c.agreement)
    for group in quantizer.groups:
        candidate = measure(best.method, best.fp32_layers + (group,))
        tried.append(candidate)
        if keeps_fp32(best, candidate, min_agreement):
            best = candidate
    return tried, best


def keeps_fp32(without: Candidate, with_group: Candidate, min_agreement: float) -> bool:
    """Whether a layer group stays fp32: needed to reach the bar, or a real gain at little cost in speed."""
    gain = with_group.agreement - without.agreement
    if without.agreement < min_agreement:
        return gain > 0
    return gain >= SEARCH_GAIN and with_group.images_per_second >= (1 - SEARCH_SLOWDOWN) * without.images_per_second


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum() + truth.sum())
    return 2 * int((prediction & truth).sum()) / total if total else 1.0


def self_check(reference: list[np.ndarray], candidate: list[np.ndarray], truths: list[np.ndarray | None], min_agreement: float) -> Int8Check:
    import numpy as np

    from ..predict.metadata import PET_CLASS

    by_fp32 = np.concatenate([r.argmax(1) for r in reference]) == PET_CLASS
    by_int8 = np.concatenate([c.argmax(1) for c in candidate]) == PET_CLASS
    differences = [dice(b, t) - dice(a, t) for a, b, t in zip(by_fp32, by_int8, truths) if t is not None]
    return Int8Check(
        images=len(by_fp32), pixels=int(by_fp32.size), agreement=float((by_fp32 == by_int8).mean()),
        dice_images=len(differences),
        mean_dice_difference=float(np.mean(differences)) if differences else 0.0,
        max_abs_dice_difference=float(np.max(np.abs(differences))) if differences else 0.0,
        min_agreement=min_agreement,
    )


def with_metadata(payload: bytes, metadata: ModelMetadata) -> bytes:
    """The quantized model carrying ``metadata`` (and the fp32 model's description) as its props."""
    import onnx

    model = onnx.load_from_string(payload)
    del model.metadata_props[:]
    for key, value in metadata.to_strings().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def int8_model(
    fp32_payload: bytes, metadata: ModelMetadata, data_dir: Path, reference: Callable[[np.ndarray], np.ndarray],
    calibration: int = DEFAULT_CALIBRATION, min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> tuple[bytes, ModelMetadata, Int8Report]:
    """Quantize ``fp32_payload`` (a checked fp32 ONNX model of the run whose photos are in ``data_dir``);
    ``reference`` gives the fp32 model's logits for a normalised batch. Returns the int8 file's bytes,
    its metadata and what was measured; raises PetsegError when the self-check fails. A model exported
    with a fixed batch size (static) is calibrated and checked in batches of that size."""
    check_int8_options(calibration, min_agreement)
    calibrating = photos(data_dir, "train", calibration, CALIBRATION_SEED)
    validating = photos(data_dir, "val", CHECK_IMAGES, CALIBRATION_SEED)
    with tempfile.TemporaryDirectory(prefix="petseg-int8-") as scratch:
        with as_petseg_errors():
            quantizer = Quantizer(fp32_payload, Path(scratch))
        batch = quantizer.fixed_batch or BATCH
        data = batches([image for image, _ in calibrating], metadata, batch)
        search_data = data[: -(-min(SEARCH_IMAGES, len(calibrating)) // batch)]
        val = batches([image for image, _ in validating], metadata, batch)
        expected = [reference(x) for x in val]
        with as_petseg_errors():
            tried, best = search(quantizer, search_data, val, expected, min_agreement)
            cache = "search" if len(search_data) == len(data) else "all"
            payload = quantizer.quantize(best.method, best.fp32_layers, data, cache)
            nodes = tuple(node for group in best.fp32_layers for node in quantizer.groups[group])
    check = self_check(expected, logits_of(payload, val), truth_masks([s for _, s in validating], metadata.image_size), min_agreement)
    report = Int8Report(best.method, best.fp32_layers, nodes, len(calibrating), sum(len(b) for b in search_data),
                        tuple(tried), check, len(fp32_payload))
    if not check.agreement >= min_agreement:
        raise PetsegError(
            f"int8 self-check failed, nothing written: the int8 model's argmax agrees with the fp32 model's on "
            f"{check.agreement:.4%} of {check.pixels:,} validation pixels (at least {min_agreement:.2%} needed; "
            f"{best.method} calibration, kept in fp32: {', '.join(best.fp32_layers) or 'none'})"
        )
    facts = {
        "format": QUANTIZATION_FORMAT, "method": best.method, "fp32_layers": list(best.fp32_layers),
        "fp32_nodes": list(nodes), "calibration_images": len(calibrating), "calibration_split": "train",
        "calibration_seed": CALIBRATION_SEED, "search_images": report.search_images,
        "candidates": [asdict(c) for c in tried], "check": asdict(check),
    }
    int8_metadata = replace(metadata, precision="int8", quantization=facts)
    return with_metadata(payload, int8_metadata), int8_metadata, report
