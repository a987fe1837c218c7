"""What a data directory holds: the release's required parts, file counts, and images that do not decode."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..base.console import err
from .images import DecodeError, read_rgb
from .oxford_pet import images_dir, parse_split_line, split_list_path, trimaps_dir

IMAGE_SUFFIX = ".jpg"
TRIMAP_SUFFIX = ".png"


def required_parts(data_dir: Path) -> list[Path]:
    """images/, annotations/trimaps/, annotations/trainval.txt and annotations/test.txt."""
    trainval, test = split_list_path(data_dir, "train"), split_list_path(data_dir, "test")
    return [images_dir(data_dir), trimaps_dir(data_dir), trainval, test]


RELEASE_TOP_LEVEL = frozenset(part.parts[0] for part in required_parts(Path()))  # images, annotations


def missing_parts(data_dir: Path) -> list[Path]:
    return [part for part in required_parts(data_dir) if not part.exists()]


@dataclass
class Inventory:
    images: int
    trimaps: int
    trainval: int
    test: int
    undecodable: list[str] = field(default_factory=list)  # file names under images/

    def to_dict(self) -> dict:
        return asdict(self)


def _files(directory: Path, suffix: str) -> list[Path]:
    """Files with ``suffix``, without hidden ones (the release's annotations hold macOS ``._*`` copies)."""
    return sorted(p for p in directory.iterdir() if p.suffix.lower() == suffix and not p.name.startswith("."))


def _entries(list_file: Path) -> int:
    lines = list_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return sum(parse_split_line(line, list_file.parent) is not None for line in lines)


def undecodable(images: list[Path]) -> list[str]:
    """Names of the ``images`` that cannot be decoded, with a progress bar (it takes a while on the release)."""
    bad = []
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err.get()) as progress:
        for path in progress.track(images):
            try:
                read_rgb(path)
            except DecodeError:
                bad.append(path.name)
    return bad


def take_inventory(data_dir: Path) -> Inventory:
    """Count the images, trimaps and list entries of a data directory that has every required part."""
    images = _files(images_dir(data_dir), IMAGE_SUFFIX)
    return Inventory(
        images=len(images),
        trimaps=len(_files(trimaps_dir(data_dir), TRIMAP_SUFFIX)),
        trainval=_entries(split_list_path(data_dir, "train")),
        test=_entries(split_list_path(data_dir, "test")),
        undecodable=undecodable(images),
    )
