"""One way from a model to pet probabilities, whatever runs it: every command that predicts uses this.

    predictor = open_predictor("runs/resnet34-unet-bs8")          # or an exported "model.onnx"
    maps = predictor.pet_probabilities([rgb_a, rgb_b])             # (H, W, 3) uint8 -> (H, W) uint8 each
    masks = [pet_mask(m) for m in maps]                            # 0/255, as `petseg infer` writes them

The steps are the same for every backend: resize each photo to the model's square size (bilinear, as in
training), normalise as the run was trained, the model's log-softmax (``tta``: averaged with the flipped
image's), the pet probability rounded to 8 bits, resized bilinearly back to the photo's size. ``infer``
writes those maps, ``serve`` answers them, ``evaluate --at original`` scores them and ``export`` checks its
file against them. A run's model computes in the precision the run recorded unless ``precision`` forces
another; an exported file computes in its own.

``prediction`` holds what every backend shares; the torch backend (``torch_predictor``) is imported for a
run directory, the onnxruntime one (``onnx_predictor``) or the OpenVINO one (``openvino_predictor``) for
an ``.onnx`` file, as ``runtime`` says (auto: ``runtime_probe`` measures which is faster), so serving an
exported model never loads torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import UsageError
from ..data.masks import DEFAULT_THRESHOLD
from .metadata import ONNX_SUFFIX
from .prediction import ModelInfo, Predictor  # noqa: F401  (what open_predictor returns, for its users)
from ..config.settings import DEFAULTS

if TYPE_CHECKING:
    from ..run import Run


def is_model_file(source: Path) -> bool:
    return source.suffix.lower() == ONNX_SUFFIX


def open_source(source: "Path | Run", weights: str | None = None) -> "Path | Run":
    """``source`` opened: a run directory as a ``Run`` (its config read once), a model file as its path.
    Fails in one line, before anything loads, when it cannot be opened (cheap: no model read)."""
    from ..run import DEFAULT_WEIGHTS, Run, check_weights

    if weights is not None:
        check_weights(weights)
    if isinstance(source, Run) or Path(source).is_dir():
        run = source if isinstance(source, Run) else Run.open(Path(source))
        run.check_weights(weights or DEFAULT_WEIGHTS)
        return run
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source} does not exist: pass a run directory (runs/NAME) or an exported {ONNX_SUFFIX} file")
    if not is_model_file(source):
        raise UsageError(f"{source} is neither a run directory nor an exported {ONNX_SUFFIX} model file")
    from .onnx_backend import import_onnxruntime

    import_onnxruntime()
    return source


def open_predictor(
    source: "Path | Run",
    weights: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    tta: bool = False,
    runtime: str = DEFAULTS.serve.runtime,
) -> Predictor:
    """``source``'s model, ready to predict: a run (its ``weights``: best, the default, or last) on torch,
    or an exported ``.onnx`` file on onnxruntime or OpenVINO (which holds the weights it was exported with).
    ``device``: auto, cpu, cuda or cuda:N; ``precision``: None for the run's recorded one; ``threads``: None
    for the cores this process may use; ``tta``: whether it will predict with TTA (a run's mask threshold is
    the one tuned for its weights and TTA); ``runtime``: what runs an exported file (onnxruntime, openvino,
    or auto: ``runtime_probe`` measures)."""
    from ..run import DEFAULT_WEIGHTS, Run

    source = open_source(source, weights)
    if isinstance(source, Run):
        from .runtime_probe import OPENVINO
        from .torch_backend import TorchPredictor

        if runtime == OPENVINO:
            raise UsageError(f"--runtime openvino runs an exported {ONNX_SUFFIX} file: petseg export {source.path}, then pass the file")
        return TorchPredictor(source, weights or DEFAULT_WEIGHTS, device, precision, threads, tta)
    from .runtime_probe import open_model_file

    predictor = open_model_file(source, runtime, precision, threads, device)
    if weights == "last" and predictor.info.weights != weights:
        raise UsageError(f"--weights last: {source} holds the {predictor.info.weights} weights it was exported with")
    if tta and predictor.info.threshold != DEFAULT_THRESHOLD:  # export keeps the threshold tuned without TTA
        reason = f"the default: the file's {predictor.info.threshold:g} was tuned without TTA"
        predictor.info = replace(predictor.info, threshold=DEFAULT_THRESHOLD, threshold_reason=reason)
    return predictor
