"""The arithmetic a run computes in: ``--precision auto|fp32|bf16|fp16``.

Training decides auto by measuring (``probe.py``). The rule below, from the hardware's flags alone, is
what ``Precision.resolve`` gives for auto elsewhere (``evaluate --precision auto``):

auto: bfloat16 autocast where bf16 is the fast path (CUDA GPUs of compute capability 8.0 and later;
CPUs with bf16 matrix units: AMX, or Arm's BF16 extension), float16 with a GradScaler on older GPUs,
float32 elsewhere. A CPU with AVX512-BF16 but no AMX computes bf16 natively, and whether that outruns
fp32 differed between the CPUs measured (benchmarks/train_speed.py prints both), so this rule, which
measures nothing, keeps fp32 there; training measures, and takes bf16 there when its measurement is
unclear (``probe.unclear_default``). A CPU without native bf16 emulates it, which is slower still.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterable

from ..base.errors import UsageError

if TYPE_CHECKING:
    import torch

FP32, BF16, FP16, AUTO = "fp32", "bf16", "fp16", "auto"
# /proc/cpuinfo flags that mean bf16 arithmetic in hardware (x86 AVX512-BF16 and AMX; Arm BF16).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# ... and those of bf16 matrix units, where bf16 convolutions outrun fp32 ones (x86 AMX; Arm BF16).
CPU_FAST_BF16_FLAGS = frozenset({"amx_bf16", "bf16"})
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere and later


def cpu_has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    return not CPU_BF16_FLAGS.isdisjoint(cpu_flags)


def cpu_bf16_is_fast(cpu_flags: Iterable[str]) -> bool:
    return not CPU_FAST_BF16_FLAGS.isdisjoint(cpu_flags)


def cuda_has_native_bf16(capability: tuple[int, int]) -> bool:
    return tuple(capability) >= CUDA_BF16_CAPABILITY


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's feature flags (x86 ``flags``, Arm ``Features``); empty where unknown."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose_precision(requested: str, device_type: str, fast_bf16: bool) -> str:
    """The precision to train in: ``requested`` unless it is auto or cannot work on ``device_type``;
    auto is bf16 where ``fast_bf16`` (bf16 outruns fp32 on this device)."""
    if requested == FP16 and device_type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA GPU (on a CPU use fp32, or bf16 where it is native)")
    if requested != AUTO:
        return requested
    if fast_bf16:
        return BF16
    return FP16 if device_type == "cuda" else FP32


def choose_channels_last(requested: bool | str, device_type: str, precision: str) -> bool:
    """NHWC or not: as ``requested``, or for auto where it pays. cuDNN (GPUs) and oneDNN's reduced-precision
    kernels work in NHWC; fp32 convolutions on a CPU were slower in it on the AVX2 machine petseg was
    measured on (training steps 14% slower for resnet34-unet, 30% for unet), so auto leaves them NCHW."""
    if isinstance(requested, bool):
        return requested
    return device_type == "cuda" or precision != FP32


def bf16_support(device: "torch.device") -> tuple[bool, bool]:
    """Whether ``device`` computes bf16 in hardware, and whether bf16 outruns fp32 there: every CUDA GPU
    with native bf16 does; on a CPU it takes bf16 matrix units (one read of the CPU's flags)."""
    import torch

    if device.type == "cuda":
        native = cuda_has_native_bf16(torch.cuda.get_device_capability(device))
        return native, native
    flags = read_cpu_flags()
    return cpu_has_native_bf16(flags), cpu_bf16_is_fast(flags)


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    device_type: str
    native_bf16: bool  # whether the device computes bf16 in hardware
    fast_bf16: bool = False  # whether bf16 outruns fp32 there (what auto and compile's auto go by)

    @classmethod
    def resolve(cls, requested: str, device: "torch.device") -> "Precision":
        native, fast = bf16_support(device)
        return cls(choose_precision(requested, device.type, fast), device.type, native, fast)

    @property
    def emulated(self) -> bool:
        """bf16 asked for on hardware that emulates it (slower than fp32)."""
        return self.name == BF16 and not self.native_bf16

    @property
    def dtype(self) -> "torch.dtype":
        import torch

        return {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}[self.name]

    def autocast(self) -> ContextManager[Any]:
        """Autocast for the forward pass and the loss; nothing in fp32."""
        import torch

        if self.name == FP32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """Loss scaling for fp16 (its gradients underflow without it); a pass-through otherwise."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.name == FP16)
