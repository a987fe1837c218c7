"""The seam between the service and a model: a ``Predictor`` takes decoded RGB images and gives each
one's 8-bit pet probability at the image's own size, as ``petseg infer --probs`` writes it.

Which backend opens a source is decided by what the source is (a run directory, or a file by its
suffix), through ``BACKENDS``; the service knows nothing of torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import runs
from ..errors import PetsegError, UsageError

if TYPE_CHECKING:
    import numpy as np

FP32 = "fp32"


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` answers."""

    name: str  # the run's name, or the model file's stem
    model: str  # the architecture, as `petseg compare` labels it
    parameters: int | None  # None where the model file does not say
    image_size: int  # the square size the model sees
    val_dice: float | None  # best validation Dice of the run, when known
    source: str  # the run directory or the file it came from
    backend: str  # torch or onnxruntime
    device: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor(Protocol):
    info: ModelInfo

    def pet_probabilities(self, images: list["np.ndarray"]) -> list["np.ndarray"]:
        """(H, W, 3) uint8 RGB images -> (H, W) uint8 pet probabilities (0-255), each at its image's size.
        Called from one thread at a time."""
        ...


class TorchRunPredictor:
    """A run's ``best.pth`` on torch, computed in fp32 exactly as ``petseg infer`` computes it (so a
    served mask has the same pixels as the one ``infer`` writes), whatever precision the run trained in."""

    def __init__(self, run_dir: Path, device: str, threads: int | None = None) -> None:
        import torch

        from ..machine.devices import resolve_device
        from ..models import count_parameters
        from ..predict import TorchPredictor

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.torch = TorchPredictor(run_dir, runs.DEFAULT_WEIGHTS, self.device)
        self.model, settings = self.torch.model, self.torch.settings
        self.image_size = settings.data.image_size
        self.info = ModelInfo(
            name=run_dir.resolve().name,
            model=_model_label(settings),
            parameters=count_parameters(self.model),
            image_size=self.image_size,
            val_dice=_best_val_dice(run_dir),
            source=str(run_dir),
            backend="torch",
            device=str(self.device),
            precision=FP32,
        )

    def pet_probabilities(self, images: list["np.ndarray"]) -> list["np.ndarray"]:
        return self.torch.pet_probabilities(images, tta=False)


def _model_label(settings: Any) -> str:
    return _model_label_of(settings.model.name, settings.model.cbam)


def _best_val_dice(run_dir: Path) -> float | None:
    from ..run_stats import load_run_stats

    try:
        return load_run_stats(run_dir).best_val_dice
    except PetsegError:
        return None


def check_run(run_dir: Path) -> None:
    """Fail in one line, before anything binds or loads, when ``run_dir`` cannot be served."""
    runs.read_config(run_dir)
    if not (run_dir / runs.BEST).is_file():
        raise PetsegError(
            f"{run_dir / runs.BEST} does not exist: it is written when an epoch of the run finishes "
            f"(to train the run: petseg train --resume {run_dir})"
        )


class OnnxFilePredictor:
    """An exported ``.onnx`` model on onnxruntime (``onnx_model.OnnxPredictor``, as ``infer --model-file``
    runs it): torch is never imported. Its precision is the exported model's (fp32 or fp16)."""

    def __init__(self, path: Path, device: str, threads: int | None = None) -> None:
        from ..onnx_model import OnnxPredictor

        self.onnx = OnnxPredictor.load(path, threads=threads, device=device)
        metadata = self.onnx.metadata
        self.info = ModelInfo(
            name=metadata.run or path.stem,
            model=_model_label_of(metadata.model, bool(metadata.model_args.get("cbam", True))),
            parameters=None,
            image_size=metadata.image_size,
            val_dice=metadata.best_val_dice,
            source=str(path),
            backend="onnxruntime",
            device=", ".join(self.onnx.providers),
            precision=metadata.precision,
        )

    def pet_probabilities(self, images: list["np.ndarray"]) -> list["np.ndarray"]:
        return self.onnx.pet_probabilities(images, tta=False)


def _model_label_of(name: str, cbam: bool) -> str:
    from ..models import model_label

    try:
        return model_label(name, cbam)
    except ValueError:  # a model this petseg does not know: its name as the file says
        return name


def check_onnx(path: Path) -> None:
    """A file, and onnxruntime installed (the file itself is read when the model loads)."""
    from ..onnx_model import import_onnxruntime

    if not path.is_file():
        raise UsageError(f"{path} is not a file: pass an exported .onnx model or a run directory")
    import_onnxruntime()


@dataclass(frozen=True)
class Backend:
    check: Callable[[Path], None]  # cheap: config and files present, runtime installed
    open: Callable[[Path, str, "int | None"], Predictor]  # (source, device, threads or None) -> a loaded predictor


RUN_DIRECTORY = Backend(check_run, TorchRunPredictor)
BACKENDS = {".onnx": Backend(check_onnx, OnnxFilePredictor)}  # model files, by suffix


def backend_for(source: Path) -> Backend:
    if source.is_dir():
        return RUN_DIRECTORY
    if not source.exists():
        raise UsageError(f"{source} does not exist: pass a run directory (runs/NAME) or an exported .onnx file")
    backend = BACKENDS.get(source.suffix.lower())
    if backend is None:
        raise UsageError(f"{source} is neither a run directory nor a model file ({', '.join(BACKENDS)})")
    return backend


def check_source(source: Path) -> None:
    backend_for(source).check(source)


def open_predictor(source: Path, device: str, threads: int | None = None) -> Predictor:
    """``source``'s model on ``device``, computing with ``threads`` threads (None: the library's default)."""
    return backend_for(source).open(source, device, threads)
