"""Fetching one file over HTTP(S) (or file://): into a ``.part`` file that survives interruptions,
continued with a Range request, retried with back-off, with connect and read timeouts and a progress bar.

It knows nothing of the dataset: checking what arrived is the caller's job. Errors of the local disk
are left to the caller as ``OSError``; every failure of the network becomes ``AttemptFailed`` (one try)
and, once every URL and retry is spent, a ``PetsegError`` naming each URL and its reason.
"""

from __future__ import annotations

import http.client
import re
import time
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import __version__
from ..base.console import err, info, warn
from ..base.errors import PetsegError
from ..config.settings import DownloadSettings

CHUNK = 1 << 16
PARTIAL_CONTENT = 206
RANGE_NOT_SATISFIABLE = 416
RETRYABLE_STATUS = {408, 429}  # besides every 5xx
CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+)")


class AttemptFailed(Exception):
    """One try at a URL failed; ``retry`` says whether trying the same URL again may help.
    ``status`` and ``content_range`` are the HTTP error's, when the server answered with one."""

    def __init__(self, reason: str, retry: bool = True, status: int | None = None, content_range: str = "") -> None:
        super().__init__(reason)
        self.retry, self.status, self.content_range = retry, status, content_range


class Unresolvable(PetsegError):
    """A host name that does not resolve: no retry, no other URL will do better (the machine looks offline).
    What to do without a network depends on what was being fetched: the caller adds it."""

    def __init__(self, url: str) -> None:
        host = urllib.parse.urlsplit(url).hostname or url
        super().__init__(f"cannot resolve {host}: this machine looks offline (or the name is wrong)")


class StartOver(Exception):
    """The server cannot continue the part file: it was removed, and the download starts from byte 0."""


def _with_read_timeout(connection_class: type, read_timeout: float) -> type:
    """``connection_class`` connecting within the request's timeout, then waiting ``read_timeout`` per read."""

    class TimedConnection(connection_class):
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(read_timeout)

    return TimedConnection


class _ReadTimeout:
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self.read_timeout = read_timeout


class _HTTPHandler(_ReadTimeout, urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_with_read_timeout(http.client.HTTPConnection, self.read_timeout), req)


class _HTTPSHandler(_ReadTimeout, urllib.request.HTTPSHandler):
    def https_open(self, req):
        connection = _with_read_timeout(http.client.HTTPSConnection, self.read_timeout)
        return self.do_open(connection, req, context=self._context)


def reason(exc: BaseException) -> str:
    """A short reason for a network failure: 'Connection refused', 'timed out', 'HTTP 404 Not Found'."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _open(opener: urllib.request.OpenerDirector, url: str, offset: int, timeout: float):
    """The response to GET ``url`` (from byte ``offset`` on, when it is not 0)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"petseg/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        retry = exc.code >= 500 or exc.code in RETRYABLE_STATUS
        raise AttemptFailed(reason(exc), retry, exc.code, exc.headers.get("Content-Range", "")) from None
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(getattr(exc, "reason", exc), socket.gaierror):
            raise Unresolvable(url) from None
        raise AttemptFailed(reason(exc)) from None


def _chunks(response) -> Iterator[bytes]:
    while True:
        try:
            chunk = response.read1(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise AttemptFailed(reason(exc)) from None
        if not chunk:
            return
        yield chunk


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None for what it does not say."""
    match = CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), int(total)


def _resume_offset(response, part: Path, offset: int) -> int:
    """Where the body of ``response`` starts in the file: ``offset`` when the server honoured the Range
    request, 0 when it sent the whole file instead (a server that ignores Range)."""
    if not offset:
        return 0
    if getattr(response, "status", None) != PARTIAL_CONTENT:
        info(f"{response.geturl()} ignored the request to resume; starting over")
        return 0
    first, _ = _content_range(response.headers.get("Content-Range", ""))
    if first != offset:
        part.unlink()
        raise StartOver(f"asked to resume at byte {offset:,}, the server answered {first}; starting over")
    return offset


class _Transfer:
    """Bytes from a URL into ``part``, continuing what ``part`` already holds, shown on one progress bar."""

    def __init__(self, part: Path, settings: DownloadSettings, progress: Progress, label: str) -> None:
        handlers = (_HTTPHandler(settings.read_timeout), _HTTPSHandler(settings.read_timeout))
        self.opener = urllib.request.build_opener(*handlers)
        self.part, self.settings, self.progress = part, settings, progress
        self.task = progress.add_task(label, total=None)

    def attempt(self, url: str) -> None:
        """One try at ``url``; when the server cannot resume, the part is dropped and started over at once."""
        try:
            self._continue(url)
        except StartOver as exc:
            info(f"{url}: {exc}")
            self._continue(url)  # no Range request now, so no second StartOver

    def _continue(self, url: str) -> None:
        offset, response = self._open(url)
        if response is None:
            return
        with response:
            start = _resume_offset(response, self.part, offset)
            length = response.headers.get("Content-Length", "")
            total = start + int(length) if length.isdigit() else None
            self.progress.update(self.task, total=total, completed=start)
            received = 0
            with open(self.part, "ab" if start else "wb") as f:
                for chunk in _chunks(response):
                    f.write(chunk)
                    f.flush()  # what arrived is on disk before the next read, ready to resume from
                    received += len(chunk)
                    self.progress.advance(self.task, len(chunk))
        if total is not None and start + received < total:
            raise AttemptFailed(f"connection closed after {start + received:,} of {total:,} bytes")

    def _open(self, url: str):
        """The part's size and the response that continues it (None when the part holds the whole file)."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        try:
            return offset, _open(self.opener, url, offset, self.settings.connect_timeout)
        except AttemptFailed as exc:
            if exc.status != RANGE_NOT_SATISFIABLE or not offset:
                raise
            if _content_range(exc.content_range)[1] == offset:
                return offset, None
            self.part.unlink()
            raise StartOver(f"the server cannot resume at byte {offset:,}; starting over") from None


def _with_retries(url: str, settings: DownloadSettings, attempt) -> None:
    for n in range(settings.retries + 1):
        try:
            return attempt()
        except AttemptFailed as exc:
            if not exc.retry or n == settings.retries:
                raise
            delay = settings.retry_delay * 2**n
            warn(f"{url}: {exc}; retry {n + 1} of {settings.retries} in {delay:g} s")
            time.sleep(delay)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err.get(),
    )


def fetch(urls: Sequence[str], part: Path, settings: DownloadSettings, label: str) -> str:
    """Download the first of ``urls`` that works into ``part``, continuing what ``part`` already holds.

    Returns the URL used. Each URL is tried ``settings.retries`` more times after a failure that may pass
    (connection refused or dropped, time-out, HTTP 5xx), waiting ``retry_delay`` seconds, then twice as
    long each time; then the next URL. Ctrl-C keeps ``part`` for the next run to resume.
    """
    failures = []
    try:
        with _progress() as progress:
            transfer = _Transfer(part, settings, progress, label)
            for url in urls:
                try:
                    _with_retries(url, settings, lambda: transfer.attempt(url))
                    return url
                except AttemptFailed as exc:
                    failures.append(f"{url}: {exc}")
                except Unresolvable:  # offline: neither a retry nor the next URL would fare better
                    progress.remove_task(transfer.task)
                    raise
            progress.remove_task(transfer.task)  # no bar for what never came
    except KeyboardInterrupt:
        if part.exists():
            info(f"{part} kept ({part.stat().st_size:,} bytes): the next download resumes from it")
        raise
    raise PetsegError(f"cannot download {label}: {'; '.join(failures)}")
