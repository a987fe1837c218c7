"""An exported ``.onnx`` model on onnxruntime, numpy and PIL: the backend of ``predictor.open_predictor``
for model files. No torch anywhere on this path.

The file's metadata (``model_metadata``) says how it was trained (image size, normalisation, classes);
the steps after the logits are ``predictor.Predictor``'s, shared with the torch backend.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import PetsegError, UsageError
from .metadata import ModelMetadata
from .prediction import ModelInfo, Predictor, flip_average, log_softmax
from ..config.settings import check_at_least

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
    from ..machine.devices import usable_cores

    return usable_cores()


def normalize(batch: np.ndarray, metadata: ModelMetadata, dtype: Any = np.float32) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) ``dtype``: (pixel - mean * scale) / (std * scale), the same
    float32 arithmetic as ``data.transforms.normalize`` in the torch path."""
    mean = np.asarray(metadata.mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(metadata.scale)
    std = np.asarray(metadata.std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(metadata.scale)
    x = (batch.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std
    return np.ascontiguousarray(x, dtype=dtype)


def session_options(ort: Any, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    return options


def model_label_of(name: str, cbam: bool) -> str:
    """The model as `petseg compare` labels it; a model this petseg does not know keeps the file's name."""
    from ..models import model_label

    try:
        return model_label(name, cbam)
    except ValueError:
        return name


def exported_info(m: ModelMetadata, source: str, backend: str, device: str, precision: str) -> ModelInfo:
    """What an exported file's metadata says about it, as every runtime that loads it describes it."""
    return ModelInfo(
        name=m.run or Path(source).stem,
        model=model_label_of(m.model, bool(m.model_args.get("cbam", True))),
        parameters=None,
        image_size=m.image_size,
        val_dice=m.best_val_dice,
        source=source,
        backend=backend,
        device=device,
        precision=precision,
        weights=m.weights_file.removesuffix(".pth"),
        threshold=m.threshold,
        threshold_reason="as the model file holds it (petseg export chose it)",
    )


class OnnxPredictor(Predictor):
    """An exported model loaded in onnxruntime. onnxruntime allows concurrent ``run`` calls on one
    session, so one predictor can serve several threads; each call computes with ``threads`` threads."""

    def __init__(self, session: Any, source: str, threads: int) -> None:
        self.session, self.threads = session, threads
        self.metadata = ModelMetadata.from_strings(session.get_modelmeta().custom_metadata_map, source)
        self.info = exported_info(self.metadata, source, "onnxruntime", ", ".join(self.providers), self.metadata.precision)

    @classmethod
    def load(cls, path: str | Path | bytes, threads: int | None = None, device: str = "auto", name: str | None = None) -> "OnnxPredictor":
        """Open ``path`` (or a serialised model in memory, called ``name``); ``threads`` (default: the
        usable cores) and ``device`` pick how it runs."""
        if threads is not None:
            check_at_least("--threads", threads, 1)
        in_memory = isinstance(path, bytes)
        source = (name or "the exported model") if in_memory else str(path)
        if not in_memory:
            path = Path(path)
            if not path.is_file():
                raise PetsegError(f"{path}: no such model file" + (" (it is a directory)" if path.is_dir() else ""))
        ort = import_onnxruntime()
        providers = choose_providers(device, ort.get_available_providers())
        options = session_options(ort, threads or default_threads())
        try:
            session = ort.InferenceSession(path if in_memory else str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PetsegError(f"{source} cannot be loaded by onnxruntime: {reason}") from None
        return cls(session, source, options.intra_op_num_threads)

    def describe(self) -> str:
        return super().describe().removesuffix(")") + f", {self.threads} threads)"

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, preferred first."""
        return list(self.session.get_providers())

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's logits for a normalised (N, 3, H, W) batch; a fixed-batch model runs it in pieces."""
        model_input = self.session.get_inputs()[0]
        fixed = model_input.shape[0] if isinstance(model_input.shape[0], int) else 0
        step = fixed or len(x)
        pieces = [self.session.run(None, {model_input.name: x[i : i + step]})[0] for i in range(0, len(x), step)]
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def log_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        x = normalize(batch, self.metadata, INPUT_TYPES.get(self.session.get_inputs()[0].type, np.float32))
        log_p = log_softmax(self.logits(x))
        if tta:
            log_p = flip_average(log_p, log_softmax(self.logits(np.ascontiguousarray(x[..., ::-1]))))
        return log_p
