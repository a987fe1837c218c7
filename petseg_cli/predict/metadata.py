"""What an exported model carries so that it can be served without its run directory.

``petseg export`` writes these as ONNX ``metadata_props``, every key prefixed ``petseg.``, every value a string (JSON for lists and tables), so that Netron or
``onnx.load(path).metadata_props`` show them as they are. No torch, no onnx: serving reads them through
onnxruntime alone.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Mapping

from ..base.errors import PetsegError

PREFIX = "petseg."
ONNX_SUFFIX = ".onnx"
CLASSES = ("background", "pet")  # the order of the model's output channels
PET_CLASS = CLASSES.index("pet")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INPUT_DESCRIPTION = "float (N, 3, H, W) RGB: (pixel / scale - mean) / std; H and W multiples of 32"
OUTPUT_DESCRIPTION = "float (N, 2, H, W) logits, channels in the order of classes"


@dataclass(frozen=True)
class ModelMetadata:
    model: str  # registry name, e.g. resnet34-unet
    model_args: dict[str, Any]  # the builder's arguments, e.g. {"cbam": true}
    image_size: int  # the square size the run trained at; images are resized to it
    mean: tuple[float, float, float]  # per RGB channel, on the 0-1 scale
    std: tuple[float, float, float]
    scale: float  # pixels are divided by this to reach the 0-1 scale (255 for 8-bit images)
    classes: tuple[str, ...]
    petseg_version: str
    best_val_dice: float | None  # the run's best validation Dice
    weights_sha256: str  # of the checkpoint file the weights came from
    weights_file: str  # best.pth or last.pth
    run: str  # the run directory's name
    precision: str  # fp32 or fp16: the type of the model's input, weights and output; int8: quantized (float input and output)
    threshold: float = 0.5  # the mask threshold the run chose on its val split (0.5 unless it chose)
    quantization: dict[str, Any] | None = None  # int8 only: method, layers kept in fp32, calibration, self-check

    def to_strings(self) -> dict[str, str]:
        optional = {f.name for f in fields(self) if f.default is not MISSING}
        return {PREFIX + key: json.dumps(value) for key, value in asdict(self).items() if value is not None or key not in optional}

    @classmethod
    def from_strings(cls, props: Mapping[str, str], source: str) -> "ModelMetadata":
        """Parse what ``to_strings`` wrote; a model without it (or with a damaged value) is a PetsegError."""
        missing = [f.name for f in fields(cls) if PREFIX + f.name not in props and f.default is MISSING]
        if not any(PREFIX + f.name in props for f in fields(cls)):
            raise PetsegError(f"{source} carries no petseg metadata: export the model with `petseg export RUN`")
        if missing:
            raise PetsegError(f"{source}: petseg metadata lacks {', '.join(PREFIX + m for m in missing)}")
        values: dict[str, Any] = {}
        for f in (f for f in fields(cls) if PREFIX + f.name in props):
            try:
                values[f.name] = json.loads(props[PREFIX + f.name])
            except json.JSONDecodeError:
                raise PetsegError(f"{source}: petseg metadata {PREFIX + f.name} is not JSON") from None
        try:
            for name in ("mean", "std", "classes"):
                values[name] = tuple(values[name])
            sound = values["image_size"] > 0 and len(values["mean"]) == len(values["std"]) == 3 and "pet" in values["classes"]
        except TypeError:
            sound = False
        if not sound:
            raise PetsegError(f"{source}: petseg metadata is damaged (image_size, mean, std or classes)")
        return cls(**values)
