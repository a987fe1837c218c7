"""A look inside a model in the spirit of torchinfo, from forward hooks on one real forward pass.

Each module down to a depth gets its output shape, parameters and FLOPs; the totals are parameters,
trainable parameters, the fp32 weights size, forward GFLOPs and activation memory, for one image.

Counting rules:
- FLOPs are 2 x the multiply-adds of Conv2d, ConvTranspose2d and Linear layers (every call, so a module
  used twice counts twice). Biases, BatchNorm, activations, pooling, attention's element-wise products
  and concatenations are not counted: they are memory-bound and would add well under 1% for these
  models.
- Activation memory is the size of the distinct tensors the modules output during the pass (an in-place
  ReLU's output is its input's and counts once); results of functions between modules (``torch.cat``)
  are not module outputs and are not included. The input image is not included either.
- MB is 10^6 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .formatting import GIGA, MEGA
from .models import count_parameters

IN_CHANNELS = 3  # RGB
BYTES_PER_PARAMETER = 4  # fp32
MATMUL_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass(frozen=True)
class LayerRow:
    name: str  # qualified name, as in the state dict
    kind: str  # class name
    depth: int  # 1 for the model's direct children
    output_shape: str
    parameters: int
    flops: int


@dataclass(frozen=True)
class ModelSummary:
    image_size: int
    rows: list[LayerRow]
    parameters: int
    trainable: int
    flops: int
    activation_bytes: int

    @property
    def weights_mb(self) -> float:
        return self.parameters * BYTES_PER_PARAMETER / MEGA

    @property
    def gflops(self) -> float:
        return self.flops / GIGA

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / MEGA


def multiply_adds(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """Multiply-adds of one call of a Conv2d, ConvTranspose2d or Linear layer (0 for anything else)."""
    if isinstance(module, nn.ConvTranspose2d):  # every input value meets a whole kernel of each output group
        kernel = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return inputs[0].numel() * kernel
    if isinstance(module, nn.Conv2d):  # every output value is a dot product over (in/groups) x kh x kw
        return output.numel() * module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


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
    """Forward hooks that note each module's first output shape, its multiply-adds and every output."""

    def __init__(self) -> None:
        self.shapes: dict[str, str] = {}
        self.macs: dict[str, int] = {}
        self.outputs: list[torch.Tensor] = []  # held until the pass ends, so no storage is reused

    def hook(self, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.shapes.setdefault(name, shape_text(output))
        if isinstance(module, MATMUL_LAYERS):
            self.macs[name] = self.macs.get(name, 0) + multiply_adds(module, inputs, output)
        self.outputs += tensors(output)

    def activation_bytes(self) -> int:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.outputs}
        return sum(storages.values())

    def flops_under(self, name: str) -> int:
        """2 x the multiply-adds of ``name`` and every module inside it (of all, for the model's "")."""
        inside = [m for n, m in self.macs.items() if not name or n == name or n.startswith(name + ".")]
        return 2 * sum(inside)


def summarize_model(model: nn.Module, image_size: int, depth: int) -> ModelSummary:
    """Run one 1 x 3 x image_size x image_size forward pass in eval mode with hooks on every module."""
    recorder = _Recorder()
    named = dict(model.named_modules())
    handles = [module.register_forward_hook(partial(recorder.hook, name)) for name, module in named.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, IN_CHANNELS, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    rows = [
        LayerRow(
            name=name,
            kind=type(module).__name__,
            depth=name.count(".") + 1,
            output_shape=recorder.shapes.get(name, ""),
            parameters=count_parameters(module),
            flops=recorder.flops_under(name),
        )
        for name, module in named.items()
        if name and name.count(".") < depth
    ]
    return ModelSummary(
        image_size=image_size,
        rows=rows,
        parameters=count_parameters(model),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=recorder.flops_under(""),
        activation_bytes=recorder.activation_bytes(),
    )
