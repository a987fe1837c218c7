"""Extracting a tar archive without trusting it: no member may land outside the target directory.

Python's own extraction filter ``data`` (tarfile, Python 3.11.4 and later) refuses members that would
land outside the target (``..``), links pointing outside it or to absolute paths, and anything but
files, directories and links (devices, FIFOs). What it lets through, petseg refuses by hand:

- absolute names: the filter strips the leading ``/`` and extracts them inside the target, where an
  archive of the release never puts them;
- a member whose path an earlier member already took (the later one would silently replace it, or fail
  on a directory), or that lies under an earlier file or link (written through a link; the known ways
  around the filter go through a chain of the archive's own links);
- a hard link to anything but an earlier file of the archive (tarfile would fail with a KeyError);
- an archive with no members at all.

One refused member fails the whole archive; extract into a staging directory so that a refusal leaves
nothing half done.
"""

from __future__ import annotations

import gzip
import posixpath
import tarfile
import zlib
from pathlib import Path

from ..base.errors import PetsegError


class UnsafeArchiveError(PetsegError):
    pass


def parents(name: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def steps(start: str, path: str) -> list[str]:
    """Every directory that following ``path`` from ``start`` (both relative to the target) passes
    through, in order, ``..`` included as the file system takes it: ``steps("a", "l/../b")`` ->
    ``["a/l", "a"]``. Not normalised first: ``l/..`` is not where it seems when ``l`` is a link."""
    stack = [part for part in start.split("/") if part not in ("", ".")]
    passed = []
    for part in path.rstrip("/").split("/")[:-1]:
        if part in ("", "."):
            continue
        if part == "..":
            if stack:
                stack.pop()
        else:
            stack.append(part)
        passed.append("/".join(stack))
    return passed


class _Members:
    """What the members extracted so far have taken: the checks that the data filter leaves to us."""

    def __init__(self) -> None:
        self.files: set[str] = set()  # regular files and hard links to them
        self.links: set[str] = set()  # symbolic links
        self.dirs: set[str] = set()  # directories, listed or implied by a member's path
        self.count = 0

    def refusal(self, member: tarfile.TarInfo) -> str | None:
        """Why ``member`` must not be extracted after the earlier ones; None when it may be."""
        if member.name.startswith("/"):
            return "it has an absolute path"
        name = posixpath.normpath(member.name)
        if name in self.files or name in self.links or (name in self.dirs and not member.isdir()):
            return "an earlier member of the archive has the same path"
        through = next((p for p in steps("", member.name) if p in self.files or p in self.links), None)
        if through:
            return f"it lies under {through!r}, an earlier member that is a file or a link"
        if member.issym():
            through = next((p for p in steps(posixpath.dirname(name), member.linkname) if p in self.links), None)
            if through:
                return f"its target {member.linkname!r} goes through {through!r}, another link of the archive"
        if member.islnk() and posixpath.normpath(member.linkname) not in self.files:
            return f"it is a hard link to {member.linkname!r}, which is not an earlier file of the archive"
        return None

    def add(self, member: tarfile.TarInfo) -> None:
        name = posixpath.normpath(member.name)
        self.dirs.update(parents(name))
        (self.dirs if member.isdir() else self.links if member.issym() else self.files).add(name)
        self.count += 1


def filter_reason(exc: tarfile.FilterError) -> str:
    """The data filter's refusal in the words of petseg's other refusals."""
    member = exc.tarinfo
    kind = "symbolic link" if member.issym() else "hard link"
    link = f"it is a {kind} pointing outside the target directory ({member.linkname})"
    reasons = {
        tarfile.OutsideDestinationError: "it would land outside the target directory",
        tarfile.AbsoluteLinkError: link,
        tarfile.LinkOutsideDestinationError: link,
        tarfile.SpecialFileError: "it is neither a file, a directory nor a link",
    }
    return next((text for cls, text in reasons.items() if isinstance(exc, cls)), str(exc))


def safe_extract(archive: Path, target: Path) -> None:
    """Extract every member of ``archive`` (tar, optionally gzip-compressed) under the directory ``target``
    through the data filter, checking each one before it is written (the filter's checks, then ours).
    Raises UnsafeArchiveError naming the first refused member."""
    root = target.resolve()
    seen = _Members()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                tarfile.data_filter(member, str(root))  # its refusals first; extract applies it again
                why = seen.refusal(member)
                if why:
                    raise UnsafeArchiveError(f"{archive.name}: refused member {member.name!r}: {why}")
                tar.extract(member, root, filter="data")
                seen.add(member)
    except tarfile.FilterError as exc:
        why = filter_reason(exc)
        raise UnsafeArchiveError(f"{archive.name}: refused member {exc.tarinfo.name!r}: {why}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise PetsegError(f"{archive} is not a readable tar archive ({exc})") from None
    if not seen.count:
        raise UnsafeArchiveError(f"{archive.name}: refused: the archive holds no members")
