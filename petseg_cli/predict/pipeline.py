"""A three-stage pipeline that keeps the model busy: while batch k runs through the model (on the calling
thread), batch k+1 is prepared (decoded, resized) on one thread and batch k-1's outputs are finished
(resized back, encoded, written) on another. PIL, numpy and the runtimes release the GIL, so on several
cores the three overlap.

Memory stays bounded: at most ``depth`` batches are prepared ahead and at most ``depth`` wait to be
finished. Each stage keeps the batches' order, so what is written, and in which order, is what a plain
loop writes. An exception in any stage stops the pipeline and is raised in the caller.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

B = TypeVar("B")  # a batch as given
P = TypeVar("P")  # a batch prepared for the model
O = TypeVar("O")  # the model's outputs for it

DEFAULT_DEPTH = 2  # batches prepared ahead, and batches waiting to be finished, at most


def pipelined(
    batches: Iterable[B], prepare: Callable[[B], P], predict: Callable[[P], O], finish: Callable[[P, O], None],
    depth: int = DEFAULT_DEPTH,
) -> None:
    """``finish(p, predict(p))`` for ``p = prepare(b)`` of every batch ``b`` in order, the three stages
    overlapping as the module says; ``depth`` >= 1."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    source = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as preparer, ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
        ahead: deque[Future] = deque()
        behind: deque[Future] = deque()
        try:
            for batch in source:
                ahead.append(preparer.submit(prepare, batch))
                if len(ahead) >= depth:
                    break
            while ahead:
                prepared = ahead.popleft().result()
                for batch in source:  # one more in preparation while the model runs
                    ahead.append(preparer.submit(prepare, batch))
                    break
                predicted = predict(prepared)
                while len(behind) >= depth:
                    behind.popleft().result()
                behind.append(finisher.submit(finish, prepared, predicted))
            while behind:
                behind.popleft().result()
        finally:
            for future in (*ahead, *behind):
                future.cancel()
