"""Compiling beside the steps, so that a run with a time budget never waits longer for ``torch.compile``
than compiling can repay.

A compiled model's first call at each input shape compiles it: minutes on a CPU whose inductor cache is
cold (longer than a short budget), seconds once cached. A budgeted run (one process) therefore compiles
its steps on a copy of the model, in a thread of its own, one input shape at a time:

- The steps wait for a graph, as they would for a compilation in the loop, but only while the waits add
  up to at most ``machine.compile.BACKGROUND_WAIT_SHARE`` of the budget (why: there). A cached graph
  compiles within that; a cold one on a short budget does not.
- Past that, the steps run the model itself (eagerly) while the thread goes on below their priority
  (it and the compiler processes it starts have the lowest nice value: the steps keep their cores), and
  a step whose shape has a compiled graph runs compiled from then on.

The copy's graph serves the model: dynamo's graph does not hold the copy's weights, it reads the parameters
of the module it is called with (a parameter's shape, dtype and ``requires_grad`` and every module's
train/eval mode are among its guards, so the copy mirrors them). The shapes are static (``dynamic=False``):
each graph is the one a later call at that shape asks for, whatever the order they were compiled in. A
step never calls a compiled network before its graph is ready: that call would compile it in the loop,
under dynamo's lock. A batch smaller than the run's (an epoch's last) runs eagerly: its graph would cost a
whole compilation for one step an epoch. A failed compilation leaves its steps eager and says so.

When the run ends, the thread finishes the graph it is compiling and stops. ``petseg train`` does not wait
for it: ``machine.compile.leave_now_if_compiling`` ends the process at once (the run's files are written by then), as the
interpreter's shutdown would stop the thread inside torch's C++ code, which aborts. A graph whose
compilation ended is in inductor's cache for the next run; one left unfinished is not. In another program
(the Python API, a test) the thread is an ordinary one: that program's exit waits for it.
"""

from __future__ import annotations

import contextvars
import copy
import os
import queue
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..base.errors import first_line
from ..machine.compile import BACKGROUND_WAIT_SHARE, COMPILE_THREAD
from .callbacks import Callback, Loop

TRAINING, VALIDATION = "training step", "validation step"
LOW_PRIORITY = 19  # the compiling thread's nice value
WAIT_SLICE = 0.2  # seconds between a waiting step's looks at the loop's stop (Ctrl-C)


@dataclass
class Graph:
    """One compiled graph: what it is for, and how its compilation went (``done`` once it ended)."""

    phase: str
    shape: tuple[int, ...]
    modes: tuple[bool, ...]  # every module's training flag, in modules() order
    seconds: float | None = None  # compiled in
    error: str | None = None  # why it failed
    done: threading.Event = field(default_factory=threading.Event)
    told: bool = False  # its outcome was said

    def label(self) -> str:
        return f"{self.phase} at {self.shape[-1]} px (batch {self.shape[0]})"


class BackgroundCompile(Callback):
    """The network each step runs (``network``): a phase's compiled model once the graph for the batch's
    shape is compiled, its plain model until then. ``plain`` maps TRAINING and VALIDATION to the modules
    their steps run; ``batch_size`` is a whole batch's; ``wait_seconds`` the most the steps wait for
    compilations in all; ``autocast`` is the run's; ``say`` prints a line (from the loop's thread only).
    ``waited`` counts the seconds the steps waited."""

    def __init__(
        self, plain: dict[str, nn.Module], batch_size: int, wait_seconds: float,
        autocast: Callable[[], AbstractContextManager], say: Callable[[str], None],
    ) -> None:
        self.plain, self.batch_size, self.autocast, self.say = plain, batch_size, autocast, say
        self.allowance, self.waited = wait_seconds, 0.0
        self.stop = threading.Event()  # the loop's (on_train_start): a stop asked for ends a wait
        self.compiled = {phase: torch.compile(module, dynamic=False) for phase, module in plain.items()}
        copies = {id(module): copy.deepcopy(module) for module in plain.values()}  # one copy of a shared module
        self._copies = {phase: copies[id(module)] for phase, module in plain.items()}
        self._compiled_copies = {phase: torch.compile(module, dynamic=False) for phase, module in self._copies.items()}
        self.graphs: dict[tuple, Graph] = {}
        self._jobs: queue.SimpleQueue[tuple[Graph, torch.Tensor] | None] = queue.SimpleQueue()
        # In a copy of this thread's context: torch keeps dynamo's and inductor's settings per context
        # (ContextVars), and the graphs must be compiled with the settings the steps would compile them with.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._work,), name=COMPILE_THREAD)
        self._thread.start()

    # -- the loop's side ---------------------------------------------------------------------------
    def network(self, phase: str, images: torch.Tensor) -> nn.Module:
        """What ``phase``'s step runs on ``images``: compiled when its graph is ready, else the plain model.
        The first time a shape is seen its graph is queued, and the step waits for it while the allowance
        lasts."""
        plain = self.plain[phase]
        if images.shape[0] != self.batch_size:
            return plain
        modes = tuple(m.training for m in plain.modules())
        key = (phase, tuple(images.shape), modes)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = Graph(phase, tuple(images.shape), modes)
            self._jobs.put((graph, torch.zeros_like(images)))
            self._wait_for(graph)
        if not graph.done.is_set():
            return plain
        if graph.error is not None:
            if not graph.told:
                graph.told = True
                self.say(f"compiling the {graph.label()} failed ({graph.error}): its steps stay eager")
            return plain
        if not graph.told:
            graph.told = True
            self.say(f"compiled the {graph.label()} in {graph.seconds:.1f} s: its steps run compiled from now")
        return self.compiled[phase]

    def _wait_for(self, graph: Graph) -> None:
        """Wait for ``graph`` while the allowance lasts, saying so (a cold compilation takes minutes)."""
        if self.allowance < 1.0:
            self.say(f"compiling the {graph.label()} beside the steps, which run eagerly until it is compiled …")
            return
        self.say(f"compiling the {graph.label()} (first call; cached for later runs; the steps wait at most "
                 f"{self.allowance:.0f} s for it, then run eagerly until it is compiled) …")
        started = time.perf_counter()
        deadline = started + self.allowance
        while not (graph.done.wait(WAIT_SLICE) or self.stop.is_set() or time.perf_counter() >= deadline):
            pass
        waited = time.perf_counter() - started
        self.allowance -= waited
        self.waited += waited
        if not graph.done.is_set() and not self.stop.is_set():
            self.say(f"the {graph.label()} is still compiling after {waited:.0f} s, the most the steps wait "
                     f"({BACKGROUND_WAIT_SHARE:.0%} of the budget): they run eagerly until it is compiled")

    def pending(self) -> list[Graph]:
        """The graphs whose compilation has not ended."""
        return [g for g in self.graphs.values() if not g.done.is_set()]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every queued graph's compilation has ended (at most ``timeout`` seconds in all);
        whether they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for graph in self.pending():
            if not graph.done.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0)):
                return False
        return True

    def close(self, wait: bool = False) -> None:
        """No more graphs: the thread ends after the one it compiles (with ``wait``, this waits for that)."""
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def on_train_start(self, loop: Loop) -> None:
        self.stop = loop.stop

    def on_train_end(self, loop: Loop) -> None:
        """Say which graphs were still compiling (their steps ran eagerly throughout), and stop queueing."""
        for graph in self.pending():
            self.say(f"the {graph.label()} was still compiling when the run ended: its steps ran eagerly "
                     "(a run with more --time, or none, waits for its compilation, which is then cached)")
        self.close()

    # -- the thread's side -------------------------------------------------------------------------
    def _work(self) -> None:
        try:  # on Linux a thread has a nice value of its own, which the processes it starts inherit
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)
        except (AttributeError, OSError):
            pass
        while (job := self._jobs.get()) is not None:
            graph, example = job
            started = time.perf_counter()
            try:
                self._compile(graph, example)
            except Exception as exc:  # inductor's and dynamo's failures are many types: the step stays eager
                cause = getattr(exc, "inner_exception", None) or exc  # what the backend raised, not dynamo's wrapper
                graph.error = f"{type(cause).__name__}: {first_line(cause)}"
            else:
                graph.seconds = time.perf_counter() - started
            graph.done.set()
        for module in self._copies.values():  # the copies' memory, once nothing more is compiled
            module.to("meta")

    def _compile(self, graph: Graph, example: torch.Tensor) -> None:
        """Compile ``graph`` by calling the copy's compiled model on ``example`` as its step would."""
        module, compiled = self._copies[graph.phase], self._compiled_copies[graph.phase]
        for copied, mode in zip(module.modules(), graph.modes):
            copied.training = mode
        if graph.phase == VALIDATION:
            with torch.inference_mode(), self.autocast():
                compiled(example)
            return
        with torch.enable_grad(), self.autocast():
            output = compiled(example)
        output.float().sum().backward()  # the backward graph compiles at its first call
        module.zero_grad(set_to_none=True)

