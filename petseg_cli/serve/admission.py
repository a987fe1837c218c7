"""How much work the service takes on at once, so that its memory has a ceiling whatever arrives.

A request's upload is received first (``receive``), up to ``max_uploads`` at once, within the upload
timeout (app.py); only then is the request admitted to the work (``admit``), up to ``max_in_flight`` at
once. Past either limit the next request is answered 503 with Retry-After at once, never queued without
end; a client sending slowly holds an upload slot (no longer than the timeout), never one of the work.
Among the admitted, at most ``max_decodes`` decode or encode an image at the same time (the steps with
several full-size buffers). So the peak is about: the model + max_uploads x the upload + max_in_flight x
(the upload + the image held) + max_decodes x (a decode's buffers), each image at most ``max_pixels``
(docs/serving.md, "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator


class Busy(Exception):
    """Every slot is taken: answer 503 and let the client retry."""


class Slots:
    """At most ``limit`` holders at once; ``what`` names them in the 503's sentence, with the option."""

    def __init__(self, limit: int, what: str, option: str) -> None:
        if limit < 1:
            raise ValueError(f"{option} must be >= 1, got {limit}")
        self.limit, self.what, self.option = limit, what, option
        self.taken = 0
        self.refused = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.taken >= self.limit:
            self.refused += 1
            raise Busy(f"{self.taken} {self.what}, this service's limit ({self.option})")
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


class Admission:
    def __init__(self, max_in_flight: int, max_decodes: int, max_uploads: int) -> None:
        if max_decodes < 1:
            raise ValueError(f"max_decodes must be >= 1, got {max_decodes}")
        self.work = Slots(max_in_flight, "requests are in progress", "--max-in-flight")
        self.uploads = Slots(max_uploads, "uploads are arriving", "--max-uploads")
        self.image_work = asyncio.Semaphore(max_decodes)  # held while decoding or encoding an image

    @property
    def max_in_flight(self) -> int:
        return self.work.limit

    @property
    def in_flight(self) -> int:
        """Requests admitted (their upload arrived) and not yet answered."""
        return self.work.taken

    @property
    def receiving(self) -> int:
        """Uploads arriving."""
        return self.uploads.taken

    @property
    def refused(self) -> int:
        """Requests answered 503 because every slot was taken."""
        return self.work.refused + self.uploads.refused

    def receive(self) -> contextlib.AbstractContextManager[None]:
        """One upload slot while the request's body arrives; ``Busy`` when there is none."""
        return self.uploads.hold()

    def admit(self) -> contextlib.AbstractContextManager[None]:
        """One slot of the work for the rest of the request's life; ``Busy`` when there is none."""
        return self.work.hold()
