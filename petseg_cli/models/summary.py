"""A look inside a model in the spirit of torchinfo, from one forward and one backward pass of one image.

Each module down to a depth gets its output shape, parameters and forward FLOPs; the totals are
parameters, trainable parameters, the fp32 weights size, forward and forward+backward GFLOPs and
activation memory, for one image.

The passes run on a copy of the model on PyTorch's meta device: tensors there have shapes but no data,
so nothing is computed and any image size is quick. FLOPs are counted by torch's own
``torch.utils.flop_counter.FlopCounterMode``, which attributes them to modules by name; forward hooks
note the output shapes and tensors.

Counting rules:
- FLOPs are FlopCounterMode's: 2 x the multiply-adds of convolutions (transposed too), matrix products
  and attention, every call (a module used twice counts twice). Biases, BatchNorm, activations,
  pooling, attention's element-wise products and concatenations are not counted: they are memory-bound
  and would add well under 1% for these models.
- The backward pass is of the sum of the output, in eval mode. It computes the gradient of every
  trainable weight and of every activation except the input image: a convolution's input gradient and
  its weight gradient each cost what its forward costs, so backward is about 2 x forward, less the
  first layer's input gradient (the image needs none).
- The per-module table shows forward FLOPs only: FlopCounterMode follows the module hierarchy through
  the backward pass only approximately, so backward FLOPs are given as a total.
- Activation memory is the size of the distinct tensors the modules output during the forward pass (an
  in-place ReLU's output is its input's and counts once); results of functions between modules
  (``torch.cat``) are not module outputs and are not included. The input image is not included either.
- MB is 10^6 bytes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..base.formatting import GIGA, MEGA
from . import count_parameters

IN_CHANNELS = 3  # RGB
BYTES_PER_PARAMETER = 4  # fp32
DEVICE = "meta"  # shapes without data: the passes compute nothing


@dataclass(frozen=True)
class LayerRow:
    name: str  # qualified name, as in the state dict
    kind: str  # class name
    depth: int  # 1 for the model's direct children
    output_shape: str
    parameters: int
    flops: int  # forward


@dataclass(frozen=True)
class ModelSummary:
    image_size: int
    rows: list[LayerRow]
    parameters: int
    trainable: int
    flops: int  # forward
    backward_flops: int
    activation_bytes: int

    @property
    def weights_mb(self) -> float:
        return self.parameters * BYTES_PER_PARAMETER / MEGA

    @property
    def gflops(self) -> float:
        return self.flops / GIGA

    @property
    def training_gflops(self) -> float:
        """Forward + backward: what one training step costs per image."""
        return (self.flops + self.backward_flops) / GIGA

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / MEGA


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, or a list or tuple of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors(item)]
    return []


def shape_text(value: Any) -> str:
    return ", ".join(str(list(t.shape)) for t in tensors(value))


class _Recorder:
    """Forward hooks that note each module's first output shape and every output."""

    def __init__(self) -> None:
        self.shapes: dict[str, str] = {}
        self.outputs: list[torch.Tensor] = []  # held until the pass ends, so no storage is freed and reused

    def hook(self, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.shapes.setdefault(name, shape_text(output))
        self.outputs += tensors(output)

    def activation_bytes(self) -> int:
        # A storage's identity, not its address: meta storages have none.
        storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in self.outputs}
        return sum(storages.values())


def module_flops(counts: dict[str, dict[Any, int]], root: nn.Module) -> dict[str, int]:
    """FlopCounterMode's counts by module, keyed by state-dict name ("" for the whole model).
    FlopCounterMode names the model by its class and each submodule by its path below it."""
    prefix = type(root).__name__
    by_name = {}
    for tracked, per_op in counts.items():
        if tracked == prefix or tracked.startswith(prefix + "."):
            by_name[tracked[len(prefix) + 1 :]] = sum(per_op.values())
    return by_name


def summarize_model(model: nn.Module, image_size: int, depth: int) -> ModelSummary:
    """Count one 1 x 3 x image_size x image_size forward pass in eval mode, then its backward pass,
    on a meta-device copy of ``model`` (``model`` itself is left as it is)."""
    from torch.utils.flop_counter import FlopCounterMode

    shadow = copy.deepcopy(model).to(DEVICE).eval()
    recorder = _Recorder()
    named = dict(shadow.named_modules())
    handles = [module.register_forward_hook(partial(recorder.hook, name)) for name, module in named.items()]
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            output = shadow(torch.zeros(1, IN_CHANNELS, image_size, image_size, device=DEVICE))
            forward, forward_counts = counter.get_total_flops(), counter.get_flop_counts()
            loss = sum(t.sum() for t in tensors(output))
            if isinstance(loss, torch.Tensor) and loss.requires_grad:  # not when every weight is frozen
                loss.backward()
            backward = counter.get_total_flops() - forward
    finally:
        for handle in handles:
            handle.remove()
    flops = module_flops(forward_counts, shadow)
    rows = [
        LayerRow(
            name=name,
            kind=type(module).__name__,
            depth=name.count(".") + 1,
            output_shape=recorder.shapes.get(name, ""),
            parameters=count_parameters(module),
            flops=flops.get(name, 0),
        )
        for name, module in named.items()
        if name and name.count(".") < depth
    ]
    return ModelSummary(
        image_size=image_size,
        rows=rows,
        parameters=count_parameters(model),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=forward,
        backward_flops=backward,
        activation_bytes=recorder.activation_bytes(),
    )
