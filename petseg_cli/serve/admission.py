"""How much work the service takes on at once, so that its memory has a ceiling whatever arrives.

A request is admitted (``admit``) before its body is read, up to ``max_in_flight`` at once; the next
is answered 503 with Retry-After at once, never queued without end. Among the admitted, at most
``max_decodes`` decode or encode an image at the same time (the steps with several full-size buffers).
So the peak is about: the model + max_in_flight x (the upload + the image held) + max_decodes x (a
decode's buffers), each image at most ``max_pixels`` (docs/serving.md, "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator


class Busy(Exception):
    """Every slot is taken: answer 503 and let the client retry."""


class Admission:
    def __init__(self, max_in_flight: int, max_decodes: int) -> None:
        if max_in_flight < 1 or max_decodes < 1:
            raise ValueError(f"max_in_flight and max_decodes must be >= 1, got {max_in_flight} and {max_decodes}")
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # requests admitted and not yet answered
        self.refused = 0  # requests answered 503 because every slot was taken
        self.image_work = asyncio.Semaphore(max_decodes)  # held while decoding or encoding an image

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """One slot for the request's whole life; ``Busy`` when there is none."""
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            raise Busy(f"{self.in_flight} requests are in progress, this service's limit (--max-in-flight)")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
