"""Fetch, verify and extract the Oxford-IIIT Pet release (``petseg download``); knows nothing of training.

Beside the data directory (in its parent) while it works:

    images.tar.gz.part     the download in progress; kept on interruption, resumed by the next run
    images.tar.gz          the archive once its MD5 matches; deleted after extraction unless kept
    images.tar.gz.corrupt  a download whose MD5 did not match, kept aside for inspection
    .<name>.*.tmp/         the staging directory, renamed onto the data directory once complete

and in the data directory, ``.petseg-download.json``: the archives' MD5s (what makes a second run a
no-op), where they came from, and the counts found after extraction.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..base.console import info
from ..base.errors import PetsegError, UsageError, malformed
from ..base.files import new_directory_beside
from ..config.settings import DownloadSettings, Settings, validate_download
from .archive import safe_extract
from .fetch import Unresolvable, fetch
from .inventory import Inventory, missing_parts, take_inventory
from .oxford_pet import MARKER, download_command, foreign_entries


@dataclass(frozen=True)
class Archive:
    name: str  # as --md5 names it
    md5: str  # the release's

    @property
    def filename(self) -> str:
        return f"{self.name}.tar.gz"

    @property
    def md5_setting(self) -> str:
        """The key of ``DownloadSettings`` that overrides ``md5`` (empty: the release's)."""
        return f"{self.name}_md5"


RELEASE = (
    Archive("images", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),  # 791,918,971 bytes
    Archive("annotations", "95a8c909bbe2e81eed6a22bccdf3f68f"),  # 19,173,078 bytes
)
OFFICIAL_SOURCES = (  # tried in this order
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
    "https://thor.robots.ox.ac.uk/~vgg/data/pets/",
)
MIRROR_SCHEMES = ("http://", "https://", "file://")
PART, CORRUPT = ".part", ".corrupt"
MD5_HEX = re.compile(r"[0-9a-f]{32}")


def md5_overrides(items: Sequence[str]) -> dict[str, str]:
    """``--md5 NAME=HASH`` items as download settings: ``{"images_md5": HASH, ...}``."""
    by_name = {archive.name: archive for archive in RELEASE}
    table = {}
    for item in items:
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in by_name or not value:
            raise malformed("--md5", f"NAME=HASH with NAME {' or '.join(by_name)}", f"{RELEASE[0].name}={RELEASE[0].md5}", item)
        table[by_name[name].md5_setting] = value
    return table


def expected_checksums(settings: DownloadSettings) -> dict[str, str]:
    """The MD5 each archive must have, by archive name: the release's unless ``settings`` override it."""
    checksums = {}
    for archive in RELEASE:
        value = getattr(settings, archive.md5_setting).strip().lower() or archive.md5
        if not MD5_HEX.fullmatch(value):
            raise malformed(
                "--md5", f"NAME=HASH with HASH the 32 hexadecimal digits of {archive.filename}'s MD5 (also "
                f"download.{archive.md5_setting})", f"{archive.name}={archive.md5}", f"{archive.name}={value}",
            )
        checksums[archive.name] = value
    return checksums


def sources(mirror: str) -> tuple[str, ...]:
    """Base URLs to try in order: the mirror alone when one is set, else the official site and its fallback."""
    if not mirror:
        return OFFICIAL_SOURCES
    if not mirror.startswith(MIRROR_SCHEMES):
        raise malformed("--mirror", f"a URL starting with {', '.join(MIRROR_SCHEMES[:-1])} or {MIRROR_SCHEMES[-1]}", "file:///srv/pets/", mirror)
    return (mirror if mirror.endswith("/") else mirror + "/",)


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def obtain(
    archive: Archive, md5: str, directory: Path, bases: Sequence[str], settings: DownloadSettings, force: bool
) -> tuple[Path, str]:
    """A verified copy of ``archive`` in ``directory`` and where it came from: the copy already there when
    its MD5 matches (unless ``force``), else a download (resuming its ``.part``, unless ``force``)."""
    path = directory / archive.filename
    part = _beside(path, PART)
    if force:
        part.unlink(missing_ok=True)
    elif path.is_file():
        if file_md5(path) == md5:
            info(f"using {path} (MD5 verified)")
            return path, str(path)
        info(f"{path} does not have the expected MD5; downloading it again")
    try:
        source = fetch([base + archive.filename for base in bases], part, settings, archive.filename)
    except Unresolvable as exc:
        raise PetsegError(
            f"{exc}. Fetch images.tar.gz and annotations.tar.gz where there is a network, put them in a "
            "directory, then: petseg download --mirror file:///that/directory/ (or set PETSEG_MIRROR to that URL)"
        ) from None
    actual = file_md5(part)
    if actual != md5:
        corrupt = _beside(path, CORRUPT)
        part.replace(corrupt)
        raise PetsegError(
            f"{archive.filename} from {source} failed verification: MD5 {actual}, expected {md5}; "
            f"kept aside as {corrupt} (run again to download it anew; a mirror that repackages the "
            f"release needs --md5 {archive.name}=HASH)"
        )
    part.replace(path)
    return path, source


def read_marker(data_dir: Path) -> dict | None:
    """The marker's content; None without a marker, {} for one that cannot be read."""
    try:
        marker = json.loads((data_dir / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _nothing_to_do(data_dir: Path, target: Path, checksums: dict[str, str], force: bool) -> str | None:
    """Why ``target`` needs no download; None when it does. A complete dataset (``images/`` and
    ``annotations/`` with the split lists) is left as it is without ``force``, whatever lies beside it (a
    README, a SOURCES file). Refuses to replace a directory that holds anything but the dataset's parts
    (even with ``force``), and, without ``force``, an incomplete one that petseg did not make."""
    if not target.exists():
        return None
    if not target.is_dir():
        raise PetsegError(f"{data_dir} is a file, not a directory; choose another --data-dir")
    if not any(target.iterdir()):
        return None
    others = foreign_entries(target)  # the decode-once cache goes with the data it was made of
    marker, missing = read_marker(target), missing_parts(target)
    if not force and not missing:
        if marker is not None and marker.get("md5") == checksums:
            return f"{data_dir} is already complete and verified; nothing to do (--force downloads it again)"
        if marker is None:
            return (
                f"{data_dir} already holds the dataset (images/, annotations/ and the split lists), not "
                "downloaded (so not verified) by petseg; nothing done"
                + ("" if others else " (--force replaces it with a verified download)")
            )
    if others:
        raise PetsegError(
            f"{data_dir} holds files that are not part of the dataset ({', '.join(others[:3])}"
            f"{' …' if len(others) > 3 else ''}); petseg replaces no such directory: choose another --data-dir"
        )
    if force:
        return None
    if marker is not None:
        info(f"{data_dir} {'is incomplete' if missing else 'was verified against other MD5s'}; downloading it again")
        return None
    raise PetsegError(
        f"{data_dir} holds an incomplete dataset ({missing[0]} is missing) that petseg did not make; "
        f"to replace it: {download_command(data_dir, force=True)}"
    )


def replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and deleted only after."""
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    target.rename(trash / target.name)
    try:
        new.rename(target)
    except BaseException:
        (trash / target.name).rename(target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def install(archives: Sequence[Path], target: Path, marker: dict) -> Inventory:
    """Extract ``archives`` into a staging directory beside ``target``, check the release's layout, take
    the inventory, write the marker, and only then rename the whole onto ``target``."""
    staging = new_directory_beside(target)  # mkdir's mode, not mkdtemp's private one: the dataset is not private
    try:
        for archive in archives:
            info(f"extracting {archive.name}")
            safe_extract(archive, staging)
        missing = [str(part.relative_to(staging)) for part in missing_parts(staging)]
        if missing:
            raise PetsegError(f"the archives do not hold the Oxford-IIIT Pet layout: no {', '.join(missing)}")
        inventory = take_inventory(staging)
        (staging / MARKER).write_text(json.dumps({**marker, "inventory": inventory.to_dict()}, indent=2) + "\n")
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was renamed into place
    return inventory


@dataclass
class DownloadResult:
    data_dir: Path
    inventory: Inventory | None = None  # None: nothing was done
    note: str = ""

    def report(self) -> list[str]:
        if self.inventory is None:
            return [self.note]
        inv = self.inventory
        lines = [
            f"Oxford-IIIT Pet is ready in {self.data_dir}: {inv.images:,} images, {inv.trimaps:,} trimaps, "
            f"{inv.trainval:,} trainval and {inv.test:,} test entries"
        ]
        if inv.undecodable:
            n, names = len(inv.undecodable), ", ".join(inv.undecodable)
            lines.append(f"{n} image{'s' * (n != 1)} cannot be decoded (petseg skips them): {names}")
        return lines


def download(
    data_dir: Path,
    bases: Sequence[str] = OFFICIAL_SOURCES,
    settings: DownloadSettings | None = None,
    keep_archives: bool = False,
    force: bool = False,
) -> DownloadResult:
    """Make ``data_dir`` hold the verified release, fetched from the first of ``bases`` that works.

    Does nothing when the marker shows it is complete with the same checksums (unless ``force``). The
    existing directory is untouched until the new one is complete; then it is replaced whole.
    """
    settings = validate_download(settings or DownloadSettings())
    checksums = expected_checksums(settings)
    target = data_dir.resolve()  # a link to a larger disk stays a link: staging and data go where it points
    note = _nothing_to_do(data_dir, target, checksums, force)
    if note:
        return DownloadResult(data_dir, note=note)
    wanted = dict.fromkeys((data_dir.parent.absolute(), target.parent))
    made = [p for d in wanted for p in (d, *d.parents) if not p.exists()]  # what mkdir creates, deepest first
    try:
        for directory in wanted:
            directory.mkdir(parents=True, exist_ok=True)
        obtained = [obtain(a, checksums[a.name], data_dir.parent, bases, settings, force) for a in RELEASE]
        marker = {
            "md5": checksums,
            "sources": {a.filename: source for a, (_, source) in zip(RELEASE, obtained)},
            "petseg_version": __version__,
        }
        inventory = install([path for path, _ in obtained], target, marker)
        if not keep_archives:
            for path, _ in obtained:
                path.unlink()
    except OSError as exc:  # a full disk, a file-size limit, permissions: what the system said, and where
        remove_empty(made)
        where = exc.filename or target.parent
        raise PetsegError(
            f"disk error: {exc.strerror or exc} ({where}); make room or fix permissions there, then run the command again"
        ) from None
    except BaseException:
        remove_empty(made)
        raise
    return DownloadResult(data_dir, inventory)


def remove_empty(made: Sequence[Path]) -> None:
    """Remove the directories this download made, deepest first, if they hold nothing: a failed
    download leaves no directory that was not there before."""
    for directory in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()  # only when empty
        except OSError:
            pass


def download_dataset(settings: Settings, keep_archives: bool = False, force: bool = False) -> DownloadResult:
    """``petseg download`` with resolved settings: the data directory, the mirror, MD5s, network limits."""
    bases = sources(settings.download.mirror)
    return download(Path(settings.data.data_dir), bases, settings.download, keep_archives, force)


def download_if_missing(settings: Settings) -> DownloadResult | None:
    """``--download`` of the commands that read the data: download only when a required part is missing."""
    if not missing_parts(Path(settings.data.data_dir)):
        return None
    return download_dataset(settings)
