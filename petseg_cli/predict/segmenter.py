"""petseg from Python: ``Segmenter``, a loaded model that turns photos into masks, probability maps and
cut-outs (docs/python.md).

    seg = Segmenter.load("runs/demo")             # a run directory, or an exported .onnx file (no torch)
    mask = seg.mask("cat.jpg")                    # (H, W) uint8, 0 or 255: what `petseg infer` writes
    probs = seg.probabilities([img1, img2])       # one batch; each map at its own photo's size
    cut = seg.cutout(img, background="white")     # the pet on white (RGB), or on transparency (RGBA)

A thin layer over the one predictor (``predictor.open_predictor``) and ``outputs``; ``petseg infer`` and
``petseg serve`` are thin callers of it, so the same photo gives the same pixels through any of them.
``petseg_cli.api`` (``from petseg_cli import Segmenter``) is its public name. What it is given is checked here, at
the edge: a path (read as ``infer`` reads it: EXIF orientation applied), a PIL image of any mode, or a
numpy array (H, W) uint8 or uint16, (H, W, 3) or (H, W, 4) uint8; anything else is one ``ImageInputError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ..base.errors import PetsegError

if TYPE_CHECKING:
    from PIL import Image

    from ..run import Run
    from .prediction import ModelInfo, Predictor

ImageInput = Union[str, "os.PathLike[str]", "Image.Image", np.ndarray]
Colour = Union[str, tuple[int, int, int], None]

ACCEPTED = "a path, a PIL image, or a numpy array (H, W) uint8 or uint16, (H, W, 3) or (H, W, 4) uint8"


class ImageInputError(PetsegError, TypeError):
    """What was given cannot be read as an image: the wrong type, an array of the wrong shape or dtype,
    or a file that does not decode. The message says which, and what is accepted."""


def as_rgb(image: ImageInput) -> np.ndarray:
    """``image`` as the (H, W, 3) uint8 RGB array the predictor takes; ``ImageInputError`` otherwise."""
    from PIL import Image

    from ..data.images import DecodeError, pil_rgb, read_rgb

    if isinstance(image, (str, os.PathLike)):
        try:
            return read_rgb(Path(image), exif_orientation=True)  # as `petseg infer` reads a file
        except DecodeError as exc:
            raise ImageInputError(str(exc)) from None
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and 0 not in image.shape:
        return image  # already what the predictor takes (serve's decoded uploads): no copy
    if not isinstance(image, (Image.Image, np.ndarray)):
        raise ImageInputError(f"a {type(image).__name__} cannot be an image: pass {ACCEPTED}")
    try:
        return pil_rgb(image if isinstance(image, Image.Image) else array_image(image))
    except (OSError, ValueError) as exc:  # a mode PIL cannot convert to RGB, an image whose pixels do not load
        raise ImageInputError(f"a {image.mode} PIL image cannot be read as RGB ({exc})") from None


def array_image(array: np.ndarray) -> "Image.Image":
    """A numpy image as PIL reads the same pixels from a file: gray (8 or 16 bits), RGB or RGBA."""
    from PIL import Image

    shape, dtype = array.shape, array.dtype
    gray = array.ndim == 2 and dtype in (np.uint8, np.uint16)
    colour = array.ndim == 3 and shape[2] in (3, 4) and dtype == np.uint8
    if not (gray or colour) or 0 in shape:
        raise ImageInputError(f"an array of shape {shape} and dtype {dtype} cannot be an image: pass {ACCEPTED}")
    return Image.fromarray(np.ascontiguousarray(array))


def check_list(images: object, method: str, single: str) -> None:
    """``probabilities`` and ``masks`` take a list: one image passed alone is refused with the fix."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        raise ImageInputError(f"Segmenter.{method} takes a list of images; for one image, call Segmenter.{single}()")


class Segmenter:
    """A model ready to segment photos. ``Segmenter.load`` opens a run directory (on torch) or an exported
    ``.onnx`` file (on onnxruntime, without importing torch)."""

    def __init__(self, predictor: "Predictor", threshold: float | None = None, tta: bool = False) -> None:
        self.predictor = predictor
        self.threshold = predictor.info.threshold if threshold is None else threshold
        self.tta = tta

    @classmethod
    def load(
        cls,
        source: "str | os.PathLike[str] | Run",
        *,
        weights: str | None = None,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        threshold: float | None = None,
        tta: bool = False,
        runtime: str | None = None,
    ) -> "Segmenter":
        """The model of ``source``: a run directory (``weights``: best, the default, or last) or an exported
        ``.onnx`` file. ``device``: auto, cpu, cuda or cuda:N; ``precision``: None for the run's own;
        ``threads``: None for the cores this process may use; ``threshold``: None for the run's (chosen on
        its val split, else 0.5); ``tta``: average each photo's prediction with its mirror image's; ``runtime``:
        what runs an .onnx file (onnxruntime, the default; openvino; auto: the faster, measured). ``source``
        may also be a ``Run`` already open."""
        from .predictor import open_predictor
        from ..config.settings import check_threshold

        if threshold is not None:
            check_threshold(threshold)
        from ..config.settings import DEFAULTS
        from ..run import Run

        opened = source if isinstance(source, Run) else Path(source)
        predictor = open_predictor(opened, weights, device, precision, threads, tta, runtime or DEFAULTS.serve.runtime)
        return cls(predictor, threshold, tta)

    @property
    def info(self) -> "ModelInfo":
        """What the model is: name, architecture, image size, backend, device, precision, threshold."""
        return self.predictor.info

    @property
    def image_size(self) -> int:
        """The square size the model sees."""
        return self.predictor.image_size

    def describe(self) -> str:
        """One line: the model, where it runs and in what precision."""
        return self.predictor.describe()

    def batch_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The pet probabilities, (N, S, S) uint8, of a batch already at the model's size: (N, S, S, 3)
        uint8 RGB with S = ``image_size`` (for callers that resize on threads of their own, as
        ``petseg infer``'s pipeline does)."""
        from ..data.masks import to_8bit

        return to_8bit(self.predictor.pet_probability(batch, self.tta))

    def probabilities(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Each photo's pet probability, (H, W) uint8 at its own size (255 = 1.0); the list is one batch."""
        check_list(images, "probabilities", "probability")
        return self.predictor.pet_probabilities([as_rgb(image) for image in images], self.tta)

    def probability(self, image: ImageInput) -> np.ndarray:
        """The photo's pet probability: (H, W) uint8, 255 = 1.0."""
        return self.probabilities([image])[0]

    def masks(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Each photo's mask, (H, W) uint8: 255 pet, 0 background; the list is one batch."""
        from ..data.masks import pet_mask

        check_list(images, "masks", "mask")
        return [pet_mask(p, self.threshold) for p in self.probabilities(images)]

    def mask(self, image: ImageInput) -> np.ndarray:
        """The photo's mask, (H, W) uint8: 255 pet, 0 background, as ``petseg infer`` writes it."""
        return self.masks([image])[0]

    def cutout(self, image: ImageInput, background: Colour = None) -> np.ndarray:
        """The photo's pet: (H, W, 4) RGBA on transparency, or with a ``background`` colour ("white",
        "#rrggbb", (r, g, b)) (H, W, 3) RGB on it, as ``petseg infer --cutout`` writes it."""
        from .outputs import cutout, parse_colour

        rgb = as_rgb(image)
        colour = background
        if isinstance(background, str):
            try:
                colour = parse_colour(background)
            except ValueError:
                raise PetsegError(f"background {background!r} is not a colour: use #rrggbb, #rgb or a name such as white") from None
        probability = self.predictor.pet_probabilities([rgb], self.tta)[0]
        return cutout(rgb, probability, colour)
