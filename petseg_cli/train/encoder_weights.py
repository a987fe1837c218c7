"""ImageNet-pretrained encoders: torchvision's ResNet34 weights (downloaded once into torch's hub cache,
verified by hash, loaded with ``weights_only=True``) or a local torchvision-format state dict, loaded
into a model's encoder whose modules carry torchvision's names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import PetsegError, UsageError, first_line

if TYPE_CHECKING:
    from torch import nn

    from ..config.settings import DownloadSettings

NONE, IMAGENET = "none", "imagenet"
DROPPED_PREFIX = "fc."  # the ImageNet classifier: no part of a segmentation encoder
OPTIONAL_SUFFIX = "num_batches_tracked"  # BatchNorm counters, absent from older torchvision files
NAMED_KEYS = 8  # keys named in an error before "and N more"


@dataclass(frozen=True)
class WeightsSource:
    """A published weights file: its URL and the SHA-256 prefix its name carries (torch.hub's convention)."""

    url: str
    label: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        match = re.search(r"-([a-f0-9]+)\.", self.filename)
        if not match:
            raise ValueError(f"{self.filename} carries no hash in its name")
        return match.group(1)


# torchvision.models.ResNet34_Weights.IMAGENET1K_V1
RESNET34_IMAGENET = WeightsSource("https://download.pytorch.org/models/resnet34-b627a593.pth", "ResNet34 ImageNet weights")


def cache_path(source: WeightsSource) -> Path:
    """Where torchvision keeps the file too: $TORCH_HOME/hub/checkpoints (~/.cache/torch by default)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / source.filename


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verified(path: Path, source: WeightsSource) -> bool:
    return file_sha256(path).startswith(source.sha256_prefix)


def fetch_weights(source: WeightsSource, settings: "DownloadSettings") -> Path:
    """The verified file in the hub cache: the one already there, else downloaded (with ``download``'s
    retries and timeouts) and checked before it takes its name. A file that fails the check is removed."""
    from ..base.console import info
    from ..data.fetch import fetch
    from ..config.settings import validate_download

    validate_download(settings)  # the check every command's settings pass, before anything is written
    path = cache_path(source)
    if path.is_file():
        if verified(path, source):
            return path
        info(f"{path} does not have the expected SHA-256; downloading it again")
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fetch([source.url], part, settings, source.label)
    except PetsegError as exc:
        raise PetsegError(
            f"{exc}; without a network, copy torchvision's {source.filename} to {path} "
            f"or pass its path: --encoder-weights PATH"
        ) from None
    except OSError as exc:
        raise PetsegError(f"cannot write {part}: {exc.strerror or exc}; pass a local file: --encoder-weights PATH") from None
    actual = file_sha256(part)
    if not actual.startswith(source.sha256_prefix):
        part.unlink(missing_ok=True)
        raise PetsegError(
            f"{source.url} failed verification: SHA-256 {actual} does not start with {source.sha256_prefix}; "
            f"the file was removed and nothing was loaded"
        )
    part.replace(path)
    info(f"downloaded {source.label} to {path} (SHA-256 verified)")
    return path


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from a file, unpickled with ``weights_only=True`` (no code runs from it)."""
    import torch

    if not path.is_file():
        raise UsageError(f"--encoder-weights: {path} does not exist (use none, imagenet or a file path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is no state dict, a truncated file, a disallowed global
        raise PetsegError(f"{path} is not a loadable torchvision state dict: {first_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PetsegError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:NAMED_KEYS])
    return shown + (f" and {len(keys) - NAMED_KEYS} more" if len(keys) > NAMED_KEYS else "")


def mismatch(encoder_state: dict[str, Any], state: dict[str, Any]) -> str:
    """What keeps ``state`` (a torchvision ResNet34 state dict, fc.* dropped) from loading: '' when nothing."""
    missing = [k for k in encoder_state if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in encoder_state]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in encoder_state.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"missing keys: {_named(missing)}" if missing else "",
        f"unexpected keys: {_named(unexpected)}" if unexpected else "",
        f"shape mismatches (file vs model): {_named(shapes)}" if shapes else "",
    ]
    return "; ".join(p for p in problems if p)


def load_encoder_weights(
    encoder: "nn.Module | None", weights: str, settings: "DownloadSettings", source: WeightsSource = RESNET34_IMAGENET
) -> str:
    """Load ``imagenet`` (``source``, fetched as needed) or the state dict file ``weights`` into ``encoder``;
    returns a line saying what was loaded. Errors (one line) name every key that does not fit."""
    if encoder is None:
        raise UsageError("this model has no pretrained encoder: --encoder-weights applies to resnet34-unet")
    path = fetch_weights(source, settings) if weights == IMAGENET else Path(weights).expanduser()
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(DROPPED_PREFIX)}
    problem = mismatch(encoder.state_dict(), state)
    if problem:
        raise PetsegError(f"{path} does not fit the ResNet34 encoder: {problem}")
    encoder.load_state_dict(state, strict=False)  # strict but for the BatchNorm counters, checked above
    return f"encoder weights loaded from {path}"
