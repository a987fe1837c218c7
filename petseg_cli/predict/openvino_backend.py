"""An exported ``.onnx`` model on OpenVINO: the second runtime of ``predictor.open_predictor`` for model
files (``--runtime openvino``, or ``auto`` when it measured faster). No torch anywhere on this path.

OpenVINO compiles the ONNX file in memory for this CPU; with a cache directory (OpenVINO's CACHE_DIR)
the compiled blob is kept there, so a second start skips the compilation. It computes in the file's
precision (an int8 file runs as int8) unless ``precision`` asks bf16 of an fp32 file: OpenVINO's
inference precision hint, which CPUs with bf16 matrix units (AMX) run several times faster. The hint
is always set, since OpenVINO's own default on a CPU with bf16 is bf16. The steps around the logits
(normalisation, log-softmax, flip TTA) are the onnxruntime backend's, so the two differ only by what
the runtimes compute.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import PetsegError, UsageError, first_line
from .metadata import PREFIX, ModelMetadata
from .onnx_backend import default_threads, exported_info, normalize
from .prediction import Predictor, flip_average, log_softmax
from ..config.settings import check_at_least

OPENVINO_INSTALL = "pip install openvino  (or: pip install 'petseg[openvino]')"
HINTS = {"fp32": "f32", "bf16": "bf16"}  # petseg's precision -> OpenVINO's inference precision hint
FLOAT_PRECISIONS = ("fp32", "fp16")  # files whose float parts a bf16 hint may compute in bf16
ONNX_METADATA = "framework"  # where OpenVINO keeps an ONNX file's metadata_props in the model's rt_info


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise PetsegError(f"--runtime openvino needs OpenVINO: {OPENVINO_INSTALL}") from None
    return openvino


def metadata_props(model: Any) -> dict[str, str]:
    """The ONNX file's ``petseg.*`` metadata_props, as OpenVINO read them into the model's rt_info."""
    info = model.get_rt_info()
    section = info[ONNX_METADATA] if ONNX_METADATA in list(info.keys()) else {}
    return {str(k): v.astype(str) for k, v in dict(section).items() if str(k).startswith(PREFIX)}


def hint_for(precision: str | None, file_precision: str, source: str) -> tuple[str, str]:
    """(petseg's precision, OpenVINO's hint) for ``--precision`` on a file of ``file_precision``."""
    wanted = file_precision if precision in (None, "auto") else precision
    if wanted == file_precision:
        return file_precision, HINTS["fp32"]  # an int8 or fp16 file: its own types, the rest in f32
    if wanted == "bf16" and file_precision in FLOAT_PRECISIONS:
        return wanted, HINTS[wanted]
    raise UsageError(f"--precision {precision}: {source} computes in {file_precision} (OpenVINO adds bf16 for an fp32 file)")


class OpenVinoPredictor(Predictor):
    """An exported model compiled by OpenVINO for the CPU. The compiled model is shared; each thread
    runs its own infer request, so one predictor can serve several threads."""

    def __init__(self, compiled: Any, metadata: ModelMetadata, source: str, threads: int, precision: str) -> None:
        self.compiled, self.metadata, self.threads = compiled, metadata, threads
        self._local = threading.local()
        self.info = exported_info(metadata, source, "openvino", "CPU", precision)

    @classmethod
    def load(
        cls, path: str | Path, threads: int | None = None, precision: str | None = None, cache_dir: Path | None = None,
    ) -> "OpenVinoPredictor":
        """Compile ``path`` for the CPU with ``threads`` (default: the usable cores), in ``precision``
        (None: the file's own), keeping the compiled blob in ``cache_dir`` when given."""
        if threads is not None:
            check_at_least("--threads", threads, 1)
        path = Path(path)
        if not path.is_file():
            raise PetsegError(f"{path}: no such model file" + (" (it is a directory)" if path.is_dir() else ""))
        ov = import_openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises its own exception types for a bad file
            raise PetsegError(f"{path} cannot be loaded by OpenVINO: {first_line(exc)}") from None
        metadata = ModelMetadata.from_strings(metadata_props(model), str(path))
        name, hint = hint_for(precision, metadata.precision, str(path))
        threads = threads or default_threads()
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if cache_dir is not None and writable(cache_dir):
            config["CACHE_DIR"] = str(cache_dir)
        try:
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise PetsegError(f"{path} cannot be compiled by OpenVINO: {first_line(exc)}") from None
        return cls(compiled, metadata, str(path), threads, name)

    def describe(self) -> str:
        return super().describe().removesuffix(")") + f", {self.threads} threads)"

    def request(self) -> Any:
        """This thread's infer request (a compiled model is thread-safe, a request is not)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The model's logits for a normalised (N, 3, H, W) batch; a fixed-batch model runs it in pieces."""
        shape = self.compiled.input(0).get_partial_shape()
        step = shape[0].get_length() if shape[0].is_static else len(x)
        request = self.request()
        pieces = [np.array(request.infer({0: x[i : i + step]})[0]) for i in range(0, len(x), step)]
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def log_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        dtype = np.float16 if self.metadata.precision == "fp16" else np.float32
        x = normalize(batch, self.metadata, dtype)
        log_p = log_softmax(self.logits(x))
        if tta:
            log_p = flip_average(log_p, log_softmax(self.logits(np.ascontiguousarray(x[..., ::-1]))))
        return log_p


def writable(directory: Path) -> bool:
    """Whether the compiled-blob cache may live in ``directory`` (made if missing)."""
    import os

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)
