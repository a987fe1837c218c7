"""Extracting a tar archive without trusting it: no member may land outside the target directory.

Refused: absolute names, names that climb out with ``..``, symbolic or hard links pointing outside,
and anything but files, directories and links (devices, FIFOs). One refused member fails the whole
archive; extract into a staging directory so that a refusal leaves nothing half done.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import PetsegError

# The standard library's own member checks, where this Python has them (3.11.4 and later), on top of ours.
STDLIB_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
FilterError = getattr(tarfile, "FilterError", ())


class UnsafeArchiveError(PetsegError):
    pass


def _outside(path: Path, root: Path) -> bool:
    return not path.resolve().is_relative_to(root)


def unsafe_reason(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why extracting ``member`` under ``root`` (a resolved directory) would be unsafe; None when it is safe."""
    if PurePosixPath(member.name).is_absolute():
        return "it has an absolute path"
    landing = root / member.name
    if _outside(landing, root):
        return "it would land outside the target directory"
    if member.issym():
        if PurePosixPath(member.linkname).is_absolute() or _outside(landing.parent / member.linkname, root):
            return f"it is a symbolic link pointing outside the target directory ({member.linkname})"
    elif member.islnk():
        if PurePosixPath(member.linkname).is_absolute() or _outside(root / member.linkname, root):
            return f"it is a hard link pointing outside the target directory ({member.linkname})"
    elif not (member.isfile() or member.isdir()):
        return "it is neither a file, a directory nor a link"
    return None


def safe_extract(archive: Path, target: Path) -> None:
    """Extract every member of ``archive`` (tar, optionally gzip-compressed) under the directory ``target``,
    checking each one before it is written. Raises UnsafeArchiveError naming the first refused member."""
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                why = unsafe_reason(member, root)
                if why:
                    raise UnsafeArchiveError(f"{archive.name}: refused member {member.name!r}: {why}")
                tar.extract(member, root, **STDLIB_FILTER)
    except FilterError as exc:
        raise UnsafeArchiveError(f"{archive.name}: refused: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise PetsegError(f"{archive} is not a readable tar archive ({exc})") from None
