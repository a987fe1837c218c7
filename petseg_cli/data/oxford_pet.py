"""The Oxford-IIIT Pet release's layout: split lists, trimaps -> binary masks, robust loading.

    images/<name>.jpg             photos (a few are really PNG or GIF; a few are corrupt)
    annotations/trimaps/<name>.png  1 pet, 2 background, 3 border
    annotations/trainval.txt      lines "NAME CLASS SPECIES BREED"
    annotations/test.txt

Splits: ``train`` = trainval lines whose index % 10 != 0, ``val`` = index % 10 == 0, ``test`` = test.txt.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..base.errors import PetsegError
from .cache import CACHE_DIRNAME, Entry, Skipped, cache_root, load_or_build
from .images import DecodeError, read_label, read_rgb, resize

SPLITS = ("train", "val", "test")
VAL_EVERY = 10
PET, BACKGROUND, BORDER = 1, 2, 3


@dataclass(frozen=True)
class Sample:
    name: str
    class_id: int
    species: int  # 1 cat, 2 dog
    breed_id: int
    image_path: Path
    trimap_path: Path


def images_dir(data_dir: Path) -> Path:
    return data_dir / "images"


def trimaps_dir(data_dir: Path) -> Path:
    return data_dir / "annotations" / "trimaps"


def split_list_path(data_dir: Path, split: str) -> Path:
    return data_dir / "annotations" / ("test.txt" if split == "test" else "trainval.txt")


class DataMissingError(PetsegError):
    pass


def download_command(data_dir: Path, force: bool = False) -> str:
    """The exact ``petseg download`` command line for ``data_dir``; ``force`` replaces what is there."""
    return f"petseg download --data-dir {shlex.quote(str(data_dir))}" + (" --force" if force else "")


MARKER = ".petseg-download.json"  # what petseg download leaves in the data directory it made


def foreign_entries(data_dir: Path) -> list[str]:
    """What ``data_dir`` holds besides the release's parts and petseg's own files (sorted names): a
    directory that holds anything else is no dataset petseg download may replace."""
    ours = {images_dir(Path()).parts[0], trimaps_dir(Path()).parts[0], MARKER, CACHE_DIRNAME}
    return sorted(p.name for p in data_dir.iterdir() if p.name not in ours) if data_dir.is_dir() else []


def download_hint(data_dir: Path) -> str:
    """What to run when ``data_dir`` lacks the dataset, as ``petseg download`` would take it: nothing
    there, or a download of petseg's own: the plain command; an incomplete copy petseg did not make:
    --force; a directory of other files (photos): download refuses it, so another directory."""
    others = foreign_entries(data_dir)
    if others:
        shown = ", ".join(others[:3]) + (" …" if len(others) > 3 else "")
        candidates = (data_dir.parent / "oxford-iiit-pet", data_dir.with_name(f"{data_dir.name}-oxford-iiit-pet"))
        new = next((c for c in candidates if not (c.exists() and any(c.iterdir()))), data_dir / "oxford-iiit-pet")
        return (
            f"it holds other files ({shown}), not the Oxford-IIIT Pet dataset: point --data-dir at the dataset, "
            f"or get it into a directory of its own with: {download_command(new)}"
        )
    force = data_dir.is_dir() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists()
    return f"get the dataset with: {download_command(data_dir, force=force)}"


def check_layout(data_dir: Path, split: str) -> None:
    """Fail with the download command when the data directory or its parts are missing (the paths in
    the message are absolute: a relative one may have been meant relative to somewhere else)."""
    if not data_dir.is_dir():
        raise DataMissingError(f"data directory {data_dir.absolute()} does not exist; {download_hint(data_dir.absolute())}")
    for needed in (images_dir(data_dir), trimaps_dir(data_dir), split_list_path(data_dir, split)):
        if not needed.exists():
            where = data_dir.absolute()
            raise DataMissingError(f"{needed.absolute()} is missing in {where}; {download_hint(where)}")


def parse_split_line(line: str, data_dir: Path) -> Sample | None:
    parts = line.split()
    if not parts or parts[0].startswith("#"):
        return None
    fields_ok = len(parts) >= 4 and all(p.isdigit() for p in parts[1:4])
    numbers = [int(p) for p in parts[1:4]] if fields_ok else [0, 0, 0]
    return Sample(
        name=parts[0],
        class_id=numbers[0],
        species=numbers[1],
        breed_id=numbers[2],
        image_path=images_dir(data_dir) / f"{parts[0]}.jpg",
        trimap_path=trimaps_dir(data_dir) / f"{parts[0]}.png",
    )


def split_samples(data_dir: Path, split: str) -> list[Sample]:
    """The samples of ``split`` in list order (no file is opened but the list)."""
    if split not in SPLITS:
        raise PetsegError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}", exit_code=2)
    check_layout(data_dir, split)
    lines = split_list_path(data_dir, split).read_text(encoding="utf-8", errors="replace").splitlines()
    samples = [s for s in (parse_split_line(line, data_dir) for line in lines) if s is not None]
    if split == "train":
        return [s for i, s in enumerate(samples) if i % VAL_EVERY != 0]
    if split == "val":
        return [s for i, s in enumerate(samples) if i % VAL_EVERY == 0]
    return samples


def part_of(samples: list[Sample], keep: int, seed: int) -> list[Sample]:
    """``keep`` of ``samples`` drawn at random with ``seed`` (every breed has its chance: the lists are
    ordered by breed), in list order; all of them when ``keep`` is not smaller."""
    if keep >= len(samples):
        return samples
    import random

    chosen = sorted(random.Random(seed).sample(range(len(samples)), keep))
    return [samples[i] for i in chosen]


def subset_sizes(train: int, val: int, fraction: float, limit: int) -> tuple[int, int]:
    """How many train and val images a run uses: ``fraction`` of the train split, at most ``limit``
    (0: no limit), at least one; the val split shrinks in the same proportion (at least one image)."""
    keep = max(1, round(train * fraction))
    if limit:
        keep = min(keep, limit)
    keep = min(keep, train)
    return keep, min(val, max(1, round(val * keep / max(train, 1))))


def run_subset(data_dir: Path, split: str, fraction: float, limit: int) -> int | None:
    """How many images of ``split`` a run with ``fraction`` and ``limit`` used (drawn with its seed by
    ``part_of``); None when it used them all (the test split is never shrunk)."""
    if split not in ("train", "val") or (fraction >= 1.0 and not limit):
        return None
    listed = {name: len(split_samples(data_dir, name)) for name in ("train", "val")}
    keep = dict(zip(listed, subset_sizes(listed["train"], listed["val"], fraction, limit)))[split]
    return keep if keep < listed[split] else None


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
    """Pet and border -> 1, background (and anything else) -> 0, as uint8."""
    return ((trimap == PET) | (trimap == BORDER)).astype(np.uint8)


def load_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's (size, size, 3) uint8 image and (size, size) uint8 mask; DecodeError if unusable."""
    image = read_rgb(sample.image_path)
    if not sample.trimap_path.exists():
        raise DecodeError(f"{sample.trimap_path}: trimap missing for {sample.name}")
    trimap = read_label(sample.trimap_path)
    if trimap.shape[:2] != image.shape[:2]:
        raise DecodeError(
            f"{sample.trimap_path}: trimap is {trimap.shape[1]}x{trimap.shape[0]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return resize(image, (size, size)), resize(trimap_to_mask(trimap), (size, size), nearest=True)


@dataclass
class LoadedSplit:
    """A split decoded and resized into uint8 arrays, with the files that had to be skipped."""

    split: str
    samples: list[Sample]
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) uint8 in {0, 1}
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def decode_samples(
    samples: list[Sample],
    size: int,
    images: np.ndarray,
    masks: np.ndarray,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[str], list[Skipped]]:
    """Decode the usable samples into consecutive rows of ``images`` and ``masks``; a bad file is
    skipped with one warning naming it. Returns the names kept and the files skipped."""
    kept: list[str] = []
    skipped: list[Skipped] = []
    for sample in samples:
        try:
            image, mask = load_pair(sample, size)
        except DecodeError as exc:
            skipped.append(Skipped(sample.name, str(exc)))
            if warn:
                warn(skip_warning(skipped[-1]))
            continue
        images[len(kept)], masks[len(kept)] = image, mask
        kept.append(sample.name)
    return kept, skipped


def skip_warning(skipped: Skipped) -> str:
    return f"skipping {skipped.message}"


def load_split(
    data_dir: Path,
    split: str,
    size: int,
    warn: Callable[[str], None] | None = None,
    cache: bool = True,
    keep: int | None = None,
    seed: int = 0,
) -> LoadedSplit:
    """Decode every usable sample of ``split``; a bad file is skipped with one warning naming it.

    With ``cache`` the arrays come from the decode-once cache (see ``data/cache.py``), built on first
    use: memory-mapped, and the same warnings are given again on every load. With ``keep``, only that
    many samples of the split, drawn with ``seed`` (see ``part_of``), are decoded.
    """
    candidates = split_samples(data_dir, split)
    tag = f"{split}-{size}"
    if keep is not None and keep < len(candidates):
        candidates = part_of(candidates, keep, seed)
        tag = f"{split}-{size}-part{keep}"  # its own entry: the whole split's stays

    def build(images: np.ndarray, masks: np.ndarray) -> tuple[list[str], list[Skipped]]:
        return decode_samples(candidates, size, images, masks, warn)

    entry = None
    if cache:
        files = [(s.name, [s.image_path, s.trimap_path]) for s in candidates]
        root = cache_root(data_dir)
        try:
            entry = load_or_build(root, tag, files, size, build)
        except OSError as exc:  # a full disk, a file where the cache should be: decode in memory instead
            if warn:
                warn(f"cannot use the cache in {root} ({exc.strerror or exc}); decoding the {split} split in memory")
        else:
            if warn and not entry.built_here:
                for skipped in entry.skipped:
                    warn(skip_warning(skipped))
    if entry is None:
        images = np.empty((len(candidates), size, size, 3), dtype=np.uint8)
        masks = np.empty((len(candidates), size, size), dtype=np.uint8)
        kept, skipped = build(images, masks)
        entry = Entry(images[: len(kept)], masks[: len(kept)], kept, skipped, built_here=True)
    if not entry.kept:
        raise PetsegError(
            f"the {split} split of {data_dir} has no usable images "
            f"({len(candidates)} listed in {split_list_path(data_dir, split).name}, {len(entry.skipped)} skipped)"
        )
    kept_names = set(entry.kept)
    samples = [s for s in candidates if s.name in kept_names]
    return LoadedSplit(split, samples, entry.images, entry.masks, [s.name for s in entry.skipped])
