"""Concurrent requests gathered into batches for one model thread.

Requests put their image on a queue and wait. One task takes the first image waiting, gathers more
until ``max_batch`` images or ``wait_s`` seconds have passed, and hands the batch to a single worker
thread, so the event loop keeps answering while the model computes (and the model never runs twice at
once). Images that arrive meanwhile form the next batch. ``max_batch=1`` turns batching off. The queue
holds at most ``max_queue`` images: past that, ``submit`` raises ``QueueFull`` at once. Times are the
event loop's clock.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """``max_queue`` images are waiting already."""


@dataclass(frozen=True)
class BatchTiming:
    """How one request's image went through the model."""

    batch_size: int  # images in the batch it was part of
    queued_ms: float  # from submit to the start of its batch
    model_ms: float  # the batch's model call


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: "asyncio.Future[tuple[Result, BatchTiming]]"
    since: float


class Batcher(Generic[Item, Result]):
    """Runs ``predict`` (a list of items -> a list of results, in order) on batches of submitted items."""

    def __init__(
        self, predict: Callable[[list[Item]], list[Result]], max_batch: int, wait_s: float, max_queue: int = 0
    ) -> None:
        if max_batch < 1 or wait_s < 0 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1, wait_s and max_queue >= 0, got {max_batch}, {wait_s}, {max_queue}")
        self.predict = predict
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue  # 0: no limit
        self.batches = 0  # model calls so far
        self.images = 0  # images through the model so far
        self._queue: asyncio.Queue[_Waiting[Item, Result]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-model")
        self._task = asyncio.create_task(self._loop(), name="petseg-batcher")

    async def stop(self) -> None:
        """Stop gathering; images still waiting get an error. The model call under way finishes first."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            self._fail([self._queue.get_nowait()], RuntimeError("the service stopped"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, item: Item) -> tuple[Result, BatchTiming]:
        """The item's result once its batch has gone through the model (the model's exception, if it fails);
        ``QueueFull`` at once when ``max_queue`` items are waiting."""
        if self._queue is None:
            raise RuntimeError("the batcher has not been started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Result, BatchTiming]] = loop.create_future()
        try:
            self._queue.put_nowait(_Waiting(item, future, loop.time()))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} images are waiting for the model already") from None
        return await future

    async def _gather(self) -> list[_Waiting[Item, Result]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    @staticmethod
    def _fail(batch: list[_Waiting[Item, Result]], exc: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [w for w in await self._gather() if not w.future.done()]  # a cancelled request drops out
            if not batch:
                continue
            started = loop.time()
            try:
                results: list[Any] = await loop.run_in_executor(self._executor, self.predict, [w.item for w in batch])
            except Exception as exc:  # every request of the batch gets the failure; the loop goes on
                self._fail(batch, exc)
                continue
            except asyncio.CancelledError:  # stopped while the model ran: nobody will get the results
                self._fail(batch, RuntimeError("the service stopped"))
                raise
            model_ms = (loop.time() - started) * 1000
            self.batches += 1
            self.images += len(batch)
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    timing = BatchTiming(len(batch), (started - waiting.since) * 1000, model_ms)
                    waiting.future.set_result((result, timing))
