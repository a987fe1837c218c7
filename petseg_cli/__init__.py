"""petseg: train, evaluate and serve pet-vs-background segmentation models on Oxford-IIIT Pet.

From Python: ``from petseg_cli import Segmenter`` (docs/python.md). It is imported on first use, so
``import petseg_cli`` (and the command line's start-up) loads neither torch nor numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ImageInputError", "Segmenter", "__version__"]

if TYPE_CHECKING:
    from .api import ImageInputError, Segmenter


def __getattr__(name: str) -> Any:
    if name in ("Segmenter", "ImageInputError"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'petseg_cli' has no attribute {name!r}")
