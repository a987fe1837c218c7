"""A run's model rebuilt from its settings, with best.pth or last.pth loaded into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.errors import PetsegError
from ..config.settings import Settings
from .layout import CONFIG


def describe_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """Which tensors differ between a model's state dict and a checkpoint's, with one example each."""
    shape = lambda tensors, key: tuple(getattr(tensors[key], "shape", ()))  # noqa: E731
    mismatched = [k for k in expected if k in given and shape(expected, k) != shape(given, k)]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} size mismatch(es), e.g. {k}: {shape(given, k)} saved, {shape(expected, k)} expected")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts) or "the tensors do not load"


def load_model(run_dir: Path, settings: Settings, path: Path) -> tuple[Any, dict[str, Any]]:
    """The model ``settings`` name with the checkpoint ``path`` loaded; (model, checkpoint).

    The model is built on the meta device (no memory, no random initialisation) and takes the loaded
    tensors as they are: this saves a second or so per start of ``infer`` and ``evaluate``."""
    import torch

    from .checkpoint import load_checkpoint
    from ..models import build_model

    checkpoint = load_checkpoint(path)
    try:
        with torch.device("meta"):
            model = build_model(settings.model.name, cbam=settings.model.cbam)
    except ValueError as exc:
        raise PetsegError(f"{run_dir / CONFIG}: {exc}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"], assign=True)
    except RuntimeError:
        raise PetsegError(
            f"{path} does not fit the {settings.model.name} model that {CONFIG} names "
            f"(the weights were saved for {checkpoint.get('model', 'another model')}): "
            + describe_mismatch(model.state_dict(), checkpoint["state_dict"])
        ) from None
    return model, checkpoint
