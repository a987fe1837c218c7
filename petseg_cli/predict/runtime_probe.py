"""``--runtime auto`` for an exported model: onnxruntime or OpenVINO, whichever measured faster for this
file on this machine, among those whose masks agree with onnxruntime's. No torch on this path.

The candidates: onnxruntime in the file's precision (the reference), OpenVINO in the file's precision,
and, for an fp32 file on a CPU with native bf16 (AVX512-BF16, AMX), OpenVINO with its bf16 inference
hint. ``--precision bf16`` leaves OpenVINO bf16 alone; where OpenVINO is not installed, auto is
onnxruntime and says so.

How it measures, as ``machine.probe`` decides training's precision, so that a busy moment does not
decide: each candidate computes the same batch of PROBE_BATCH photo-like images once, untimed (that
builds its kernels, and its masks are compared with the reference's: a candidate agreeing on fewer than
MIN_AGREEMENT of the pixels is out); then ROUNDS rounds alternate the candidates, one timed batch each.
A candidate wins only when it is ahead of onnxruntime by MARGIN in every round (the fastest such, by
median); else onnxruntime. The other processes' share of the cores is recorded; a verdict measured on a
busy machine is used for this process only, an idle one is cached per file, machine, runtime versions
and threads in petseg's cache directory, and says ``cached`` when read back.

A busy machine does not measure at all: before building the candidates, auto looks at the load for
GLANCE_SECONDS, and when the other processes are busy it takes onnxruntime unmeasured and says so. A
measurement there would run again at every start (nothing measured busy is cached) and cost more than the
faster runtime wins back on a command's photos, which would make auto slower than onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..base.errors import UsageError
from ..machine.probe import MARGIN, ROUNDS, Load, LoadMeter, read_cache, write_cache
from ..config.settings import AUTO, DEFAULTS, RUNTIMES, check_choice

if TYPE_CHECKING:
    import numpy as np

    from .prediction import Predictor

ONNXRUNTIME, OPENVINO = RUNTIMES[1:]
# Images per timed batch: the batch infer and evaluate run by default (a runtime's lead can depend on it:
# OpenVINO's int8 gains more from a batch of 8 than of 2). Measured once per file, on an idle machine.
PROBE_BATCH = DEFAULTS.train.batch_size
MIN_AGREEMENT = 0.995  # share of pixels whose mask must equal onnxruntime's for a runtime to be chosen
CACHE_FILE = "runtime-probe.json"
CACHE_VERSION = 2  # verdicts of version 1 were measured on batches of 2: measured again
PROBE_SEED = 0
NOT_INSTALLED = "OpenVINO is not installed (pip install 'petseg[openvino]')"
GLANCE_SECONDS = 0.25  # how long auto looks at the machine's load before it measures


@dataclass(frozen=True)
class Candidate:
    runtime: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass(frozen=True)
class RuntimeVerdict:
    runtime: str
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per batch, by candidate label
    rounds: list[dict[str, float]] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)  # share of pixels whose mask equals onnxruntime's
    batch: int = 0
    rule: str = ""  # why onnxruntime, when the measurement did not choose another
    load: Load | None = None
    measured_at: str = ""
    cached: bool = False

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.runtime, self.precision)

    def describe(self) -> str:
        """One line: the runtime chosen, why, and how it was measured (and that it came from the cache)."""
        head = f"runtime auto: {self.runtime} ({self.precision})"
        if not self.seconds:
            return f"{head}: {self.rule}"
        timings = ", ".join(
            f"{name} {s * 1000:.0f} ms" + (f" (masks agree {self.agreement[name]:.2%})" if name in self.agreement else "")
            for name, s in self.seconds.items()
        )
        why = f"; {self.rule}" if self.rule else ""
        load = f"; {self.load.describe()}" if self.load else ""
        where = f"; cached, measured {self.measured_at}" if self.cached else ""
        return f"{head}: median of {len(self.rounds)} rounds of {self.batch} images: {timings}{why}{load}{where}"


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported, without importing it (a verdict for onnxruntime never loads it)."""
    import importlib.util
    import sys

    if "openvino" in sys.modules:
        return sys.modules["openvino"] is not None
    return importlib.util.find_spec("openvino") is not None


def candidates(file_precision: str, precision: str | None, native_bf16: bool, with_openvino: bool) -> list[Candidate]:
    """What auto may choose, onnxruntime (the reference) first; ``precision``: --precision (None, auto,
    fp32, bf16, ...)."""
    wanted = None if precision in (None, "auto") else precision
    found = []
    if wanted in (None, file_precision):
        found.append(Candidate(ONNXRUNTIME, file_precision))
        if with_openvino:
            found.append(Candidate(OPENVINO, file_precision))
    if with_openvino and file_precision == "fp32" and (wanted == "bf16" or (wanted is None and native_bf16)):
        found.append(Candidate(OPENVINO, "bf16"))
    return found


def winner(rounds: list[dict[str, float]], agreement: dict[str, float], reference: str) -> str | None:
    """The fastest (by median) of the candidates that agree and are ahead of ``reference`` by MARGIN in
    every round; None when none is."""
    ahead = [
        name for name in rounds[0]
        if name != reference and agreement.get(name, 0.0) >= MIN_AGREEMENT
        and all(r[reference] > r[name] * MARGIN for r in rounds)
    ]
    return min(ahead, key=lambda name: statistics.median(r[name] for r in rounds), default=None)


def probe_images(size: int, count: int = PROBE_BATCH) -> "np.ndarray":
    """(count, size, size, 3) uint8 images with smooth shapes and some noise, like photos rather than
    static (deterministic)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(PROBE_SEED)
    coarse = rng.integers(0, 256, (count, 6, 6, 3), dtype=np.uint8)
    smooth = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in coarse])
    noise = rng.integers(-12, 13, smooth.shape)
    return np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def time_candidates(predictors: dict[str, "Predictor"], images: "np.ndarray", reference: str) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Each predictor once on ``images``, untimed (its masks compared with ``reference``'s), then ROUNDS
    alternated rounds of one timed batch each."""
    masks = {name: p.log_probabilities(images).argmax(1) for name, p in predictors.items()}
    agreement = {name: round(float((m == masks[reference]).mean()), 6) for name, m in masks.items() if name != reference}
    rounds = []
    for _ in range(ROUNDS):
        timed = {}
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor.log_probabilities(images)
            timed[name] = round(time.perf_counter() - started, 4)
        rounds.append(timed)
    return rounds, agreement


def measure_runtime(
    options: list[Candidate], build: Callable[[Candidate], "Predictor"], key: str, cache_dir: Path | None,
    remeasure: bool = False, meter: Callable[[], LoadMeter] = LoadMeter,
    timer: Callable[..., tuple[list[dict[str, float]], dict[str, float]]] = time_candidates,
) -> tuple[RuntimeVerdict, dict[str, "Predictor"]]:
    """The verdict for ``options`` (onnxruntime first) and the predictors it built (the winner among them,
    for the caller to keep): cached unless ``remeasure``, else measured under ``meter`` and cached when
    the machine was idle."""
    cache = read_cache(cache_dir, CACHE_FILE, CACHE_VERSION, valid_entry)
    if key in cache and not remeasure:
        return cached_verdict(cache[key]), {}
    glance = glance_at_load(meter)
    if glance.busy:
        first = options[0]
        rule = f"not measured, the machine is busy ({glance.describe()}): {first.runtime}, measured when it is idle"
        return RuntimeVerdict(first.runtime, first.precision, rule=rule, load=glance), {}
    predictors = {c.label: build(c) for c in options}
    reference = options[0].label
    images = probe_images(predictors[reference].image_size)
    load_meter = meter()
    rounds, agreement = timer(predictors, images, reference)
    load = load_meter.load()
    chosen = winner(rounds, agreement, reference)
    rule = "" if chosen else f"no runtime {MARGIN - 1:.0%} ahead of onnxruntime in every round with agreeing masks: onnxruntime"
    pick = next(c for c in options if c.label == (chosen or reference))
    medians = {name: round(statistics.median(r[name] for r in rounds), 4) for name in rounds[0]}
    verdict = RuntimeVerdict(
        pick.runtime, pick.precision, medians, rounds, agreement, len(images), rule, load,
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if not load.busy:
        write_cache(cache_dir, {**cache, key: {**asdict(verdict), "cached": True}}, CACHE_FILE, CACHE_VERSION)
    return verdict, predictors


def glance_at_load(meter: Callable[[], LoadMeter], seconds: float = GLANCE_SECONDS) -> Load:
    """The other processes' share of the cores over ``seconds`` (this process sleeping meanwhile)."""
    watching = meter()
    time.sleep(seconds)
    return watching.load()


def cached_verdict(entry: dict) -> RuntimeVerdict:
    load = entry.get("load")
    return RuntimeVerdict(**{**entry, "load": Load(**load) if load else None, "cached": True})


def valid_entry(entry: dict) -> bool:
    try:
        verdict = cached_verdict(entry)
    except (TypeError, ValueError):
        return False
    return verdict.runtime in (ONNXRUNTIME, OPENVINO) and isinstance(verdict.precision, str)


def runtime_key(path: Path, threads: int, precision: str | None) -> str:
    """What a verdict holds for: the file (path, size, modification time), the CPU, the runtimes'
    versions (OpenVINO's from its installed metadata, so that a verdict for onnxruntime never imports it),
    the threads and the precision asked."""
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    from ..machine.precision import read_cpu_flags

    try:
        openvino_version = version("openvino")
    except PackageNotFoundError:
        openvino_version = "?"

    stat = path.stat()
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "cpu")
    flags = hashlib.sha1(" ".join(sorted(read_cpu_flags())).encode()).hexdigest()[:12]
    return json.dumps([
        str(path.resolve()), stat.st_size, stat.st_mtime_ns, f"{cpu} {flags}", onnxruntime.__version__,
        openvino_version, threads, precision or "auto",
    ])


def build_candidate(path: Path, candidate: Candidate, threads: int | None, device: str) -> "Predictor":
    if candidate.runtime == OPENVINO:
        from ..data.cache import user_cache_dir
        from .openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor.load(path, threads, candidate.precision, cache_dir=user_cache_dir() / "openvino")
    from .onnx_backend import OnnxPredictor

    predictor = OnnxPredictor.load(path, threads=threads, device=device)
    if candidate.precision not in (None, AUTO, predictor.info.precision):
        raise UsageError(
            f"--precision {candidate.precision}: {path} computes in {predictor.info.precision} on onnxruntime, as it was exported"
            + (" (--runtime openvino computes an fp32 file in bf16)" if candidate.precision == "bf16" else "")
        )
    return predictor


def auto_runtime(path: Path, precision: str | None, threads: int | None, device: str, remeasure: bool = False) -> "Predictor":
    """``--runtime auto``: the predictor of the runtime chosen (by measurement where there is a choice),
    with the verdict's line in its ``info.runtime_choice``."""
    import dataclasses

    from ..data.cache import user_cache_dir
    from ..machine.precision import cpu_has_native_bf16, read_cpu_flags
    from .onnx_backend import default_threads

    installed = openvino_installed()
    gpu = device != "cpu" and device != "auto" or (device == "auto" and gpu_provider())
    if not installed or gpu:
        rule = NOT_INSTALLED if not installed else "OpenVINO runs on the CPU and this model on a GPU"
        verdict = RuntimeVerdict(ONNXRUNTIME, precision or AUTO, rule=rule + ": onnxruntime")
        predictor = build_candidate(path, Candidate(ONNXRUNTIME, precision or AUTO), threads, device)
    else:
        reference = build_candidate(path, Candidate(ONNXRUNTIME, AUTO), threads, device)
        options = candidates(reference.info.precision, precision, cpu_has_native_bf16(read_cpu_flags()), installed)
        if not options:
            raise UsageError(f"--precision {precision}: {path} computes in {reference.info.precision}, on onnxruntime and on OpenVINO")
        key = runtime_key(path, threads or default_threads(), precision)
        loaded = {Candidate(ONNXRUNTIME, reference.info.precision).label: reference}

        def build(candidate: Candidate) -> "Predictor":
            return loaded.get(candidate.label) or build_candidate(path, candidate, threads, device)

        verdict, built = measure_runtime(options, build, key, user_cache_dir(), remeasure)
        built = {**loaded, **built}
        predictor = built.get(verdict.candidate.label) or build_candidate(path, verdict.candidate, threads, device)
    if verdict.precision == AUTO:
        verdict = dataclasses.replace(verdict, precision=predictor.info.precision)
    predictor.info = dataclasses.replace(predictor.info, runtime_choice=verdict.describe())
    return predictor


def gpu_provider() -> bool:
    from .onnx_backend import CUDA_PROVIDER, import_onnxruntime

    return CUDA_PROVIDER in import_onnxruntime().get_available_providers()


def open_model_file(path: Path, runtime: str, precision: str | None, threads: int | None, device: str) -> "Predictor":
    """An exported file on ``runtime`` (auto, onnxruntime or openvino), in ``precision`` (None: its own)."""
    check_choice("--runtime", runtime, RUNTIMES)
    if runtime == AUTO:
        return auto_runtime(path, precision, threads, device)
    if runtime == OPENVINO and device not in ("auto", "cpu"):
        raise UsageError(f"--runtime openvino runs on the CPU: pass --device cpu, or --runtime onnxruntime for --device {device}")
    return build_candidate(path, Candidate(runtime, precision or AUTO), threads, device)
