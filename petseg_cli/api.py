"""petseg's Python API: ``Segmenter`` (docs/python.md), a loaded model that turns photos into masks,
probability maps and cut-outs, and ``ImageInputError``, what it raises for what cannot be an image.

    from petseg_cli import Segmenter
    seg = Segmenter.load("runs/demo")             # a run directory, or an exported .onnx file (no torch)
    mask = seg.mask("cat.jpg")                    # (H, W) uint8, 0 or 255: what `petseg infer` writes

They live in the prediction core (``predict/segmenter.py``), of which ``petseg infer`` and ``petseg serve``
are thin callers; this module is their stable public name.
"""

from __future__ import annotations

from .predict.segmenter import Colour, ImageInput, ImageInputError, Segmenter

__all__ = ["Colour", "ImageInput", "ImageInputError", "Segmenter"]
