"""The model registry: a model name (or alias) -> its builder; it validates its own names and the
settings that depend on the model (``check_settings``).

A new architecture is one new file and one entry in ``MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..base.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from ..config.settings import Settings


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., "nn.Module"]
    aliases: tuple[str, ...] = ()
    uses_cbam: bool = False
    # The submodule named like torchvision's ResNet34 (pretrained weights load into it), or None.
    encoder: str | None = None


def _unet(cbam: bool = True) -> "nn.Module":
    from .unet import UNet

    return UNet()


def _resnet34_unet(cbam: bool = True) -> "nn.Module":
    from .resnet34_unet import ResNet34UNet

    return ResNet34UNet(cbam=cbam)


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(_unet, aliases=("Unet",)),
    "resnet34-unet": ModelSpec(_resnet34_unet, aliases=("ResNet34_Unet",), uses_cbam=True, encoder="encoder"),
}

# Sides of an input must be multiples of this (five 2x down-samplings in the deepest model).
SIZE_MULTIPLE = 32


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or one of its aliases; ValueError names the choices."""
    for canonical, spec in MODELS.items():
        if name == canonical or name in spec.aliases:
            return canonical
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def build_model(name: str, cbam: bool = True) -> "nn.Module":
    return MODELS[canonical_name(name)].build(cbam=cbam)


def encoder_of(name: str, model: "nn.Module") -> "nn.Module | None":
    """The model's pretrainable encoder, or None when it has none."""
    encoder = MODELS[canonical_name(name)].encoder
    return model.get_submodule(encoder) if encoder else None


def has_encoder(name: str) -> bool:
    return MODELS[canonical_name(name)].encoder is not None


def model_label(name: str, cbam: bool = True) -> str:
    """A short display name: the model, marked ``no-cbam`` where that matters."""
    canonical = canonical_name(name)
    return f"{canonical} (no-cbam)" if MODELS[canonical].uses_cbam and not cbam else canonical


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def check_image_size(value: int, option: str = "--image-size") -> None:
    if not (isinstance(value, int) and value >= SIZE_MULTIPLE and value % SIZE_MULTIPLE == 0):
        raise UsageError(f"{option} must be a positive multiple of {SIZE_MULTIPLE}, got {value}")


def check_settings(settings: "Settings") -> None:
    """The model's name (made canonical in place), the image size, and what needs a pretrainable encoder."""
    m, t = settings.model, settings.train
    try:
        m.name = canonical_name(m.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_image_size(settings.data.image_size)
    if m.encoder_weights == "":
        raise UsageError("--encoder-weights must be none, imagenet or a file path")
    pretrained = m.encoder_weights != "none"
    if (pretrained or t.freeze_encoder_epochs) and not has_encoder(m.name):
        raise UsageError(f"{m.name} has no pretrained encoder: --encoder-weights and --freeze-encoder-epochs apply to resnet34-unet")
    if pretrained and settings.data.normalization != "imagenet":
        raise UsageError(
            f"--encoder-weights {m.encoder_weights} needs data.normalization = \"imagenet\" (the statistics the "
            f"encoder was trained with), got {settings.data.normalization!r}"
        )
