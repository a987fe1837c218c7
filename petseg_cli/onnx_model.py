"""Serving an exported ``.onnx`` model with onnxruntime, numpy and PIL: no torch anywhere on this path.

``OnnxPredictor`` is the seam for anything that serves masks (``petseg infer --model-file``, an HTTP
service): load it once, then hand it decoded images::

    predictor = OnnxPredictor.load("runs/resnet34-unet-bs8/model.onnx")   # threads, providers: from the machine
    maps = predictor.pet_probabilities([rgb_a, rgb_b])   # (H, W, 3) uint8 arrays -> (H, W) uint8 each
    masks = [pet_mask(m) for m in maps]                  # 0/255, as `petseg infer` writes them
    predictor.metadata.best_val_dice, predictor.metadata.model, ...

The steps are those of the torch path (``predict.TorchPredictor``): resize to the run's image size,
normalise, logits, softmax, 8-bit probability, bilinear resize back, threshold at 128 (``masks``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PetsegError, UsageError
from .masks import at_image_sizes, model_batch, to_8bit
from .model_metadata import PET_CLASS, ModelMetadata
from .settings import check_at_least

# Execution providers in the order they are preferred when the machine has them (``--device auto``).
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
RUNTIME_INSTALL = "pip install onnxruntime  (or: pip install 'petseg[onnx]')"
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise PetsegError(f"serving an .onnx model needs onnxruntime: {RUNTIME_INSTALL}") from None
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[Any]:
    """onnxruntime execution providers for ``--device auto|cpu|cuda[:N]`` among those installed."""
    if device == "auto":
        return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)
    if device == "cpu":
        return [CPU_PROVIDER]
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if CUDA_PROVIDER not in available:
        raise UsageError(
            f"--device {device}: this onnxruntime has no CUDA provider (it has {', '.join(available)}); "
            "install onnxruntime-gpu, or use --device cpu"
        )
    return [(CUDA_PROVIDER, {"device_id": int(match.group(1) or 0)}), CPU_PROVIDER]


def default_threads() -> int:
    """Threads for one session: the cores this process may run on (affinity and cpusets respected)."""
    from .machine.devices import usable_cores

    return usable_cores()


def normalize(batch: np.ndarray, metadata: ModelMetadata, dtype: Any = np.float32) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) ``dtype``: (pixel - mean * scale) / (std * scale), the same
    float32 arithmetic as ``data.transforms.normalize`` in the torch path."""
    mean = np.asarray(metadata.mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(metadata.scale)
    std = np.asarray(metadata.std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(metadata.scale)
    x = (batch.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std
    return np.ascontiguousarray(x, dtype=dtype)


def softmax_pet(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) logits -> (N, H, W) float32 probability of the pet class."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, PET_CLASS] / shifted.sum(axis=1)


@dataclass
class OnnxPredictor:
    """An exported model loaded in onnxruntime; ``pet_probabilities`` is all a server needs.

    ``pet_probabilities(images, tta=False)`` takes decoded (H, W, 3) uint8 RGB arrays (any sizes, one
    batch) and returns one (H, W) uint8 map per image at that image's size: the pet probability x 255,
    pet where >= 128 (``masks.pet_mask``). ``metadata`` is what the file carries (model, image size,
    normalisation, best val Dice, weights' SHA-256 …). onnxruntime allows concurrent ``run`` calls on one
    session, so one predictor can serve several threads; each call computes with ``threads`` threads.
    """

    session: Any  # onnxruntime.InferenceSession
    metadata: ModelMetadata
    path: Path
    threads: int

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, device: str = "auto") -> "OnnxPredictor":
        """Open ``path``; ``threads`` (default: the usable cores) and ``device`` pick how it runs."""
        path = Path(path)
        if threads is not None:
            check_at_least("--threads", threads, 1)
        if not path.is_file():
            raise PetsegError(f"{path}: no such model file" + (" (it is a directory)" if path.is_dir() else ""))
        ort = import_onnxruntime()
        providers = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PetsegError(f"{path} cannot be loaded by onnxruntime: {reason}") from None
        metadata = ModelMetadata.from_strings(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, metadata, path, options.intra_op_num_threads)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, preferred first."""
        return list(self.session.get_providers())

    def describe(self) -> str:
        dice = self.metadata.best_val_dice
        return (
            f"using {self.path} ({self.metadata.model} {self.metadata.precision}, best val Dice "
            + (f"{dice:.4f}" if dice is not None else "unknown")
            + f"; onnxruntime on {', '.join(self.providers)}, {self.threads} threads)"
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's logits for a normalised (N, 3, H, W) batch; a fixed-batch model runs it in pieces."""
        model_input = self.session.get_inputs()[0]
        fixed = model_input.shape[0] if isinstance(model_input.shape[0], int) else 0
        step = fixed or len(x)
        pieces = [self.session.run(None, {model_input.name: x[i : i + step]})[0] for i in range(0, len(x), step)]
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def pet_probability(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, S, S, 3) uint8 at the model's size -> (N, S, S) float32 pet probability.

        With ``tta``, the softmax of the image and of its horizontal flip (flipped back) are averaged.
        """
        x = normalize(batch, self.metadata, INPUT_TYPES.get(self.session.get_inputs()[0].type, np.float32))
        pet = softmax_pet(self.logits(x))
        if tta:
            flipped = softmax_pet(self.logits(np.ascontiguousarray(x[..., ::-1])))[..., ::-1]
            pet = (pet + flipped) / 2
        return pet

    def pet_probabilities(self, images: list[np.ndarray], tta: bool = False) -> list[np.ndarray]:
        """Decoded (H, W, 3) uint8 RGB images -> each one's 8-bit pet probability (uint8, 255 = 1.0) at
        its own H x W; ``masks.pet_mask`` turns one into the 0/255 mask. Batch as many as memory allows."""
        if not images:
            return []
        small = to_8bit(self.pet_probability(model_batch(images, self.metadata.image_size), tta))
        return at_image_sizes(small, images)
