"""``petseg`` with faults injected, for the tests that kill or slow a training in its own process (the
package has no hook for them). Run as ``python tests/petseg_with_faults.py [FAULTS] -- ARGS``, directly
or as torchrun's training script; ARGS are petseg's. FAULTS:

  --slow-save NAME:SECONDS  hold NAME's temporary file SECONDS before its rename (repeatable), so that
                            a kill lands reproducibly while that file is being written
  --kill-at EPOCH[:RANK]    SIGKILL this process as epoch EPOCH begins (with RANK: only that rank's), in
                            the first attempt of a torchrun job only (TORCHELASTIC_RESTART_COUNT 0 or
                            unset), so that a restart shows what it continues
  --kill-agent              with --kill-at, SIGKILL the parent (torchrun's agent) first: the node is gone
  --compile-never-ends      every torch.compile backend call blocks for good (a compilation that does not
                            end before the run does)

The command re-executes itself with tcmalloc as ``python -m petseg_cli`` does (sys.orig_argv), before
the faults are set up: the new process parses them again."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

FAULTS = Path(__file__).resolve()


def command(faults: list[str], args: list[str]) -> list[str]:
    """The argv that runs ``petseg ARGS`` with ``faults`` (after the interpreter: ``[sys.executable, *command]``)."""
    return [str(FAULTS), *faults, "--", *args]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="petseg_with_faults")
    parser.add_argument("--slow-save", action="append", default=[], metavar="NAME:SECONDS")
    parser.add_argument("--kill-at", metavar="EPOCH[:RANK]")
    parser.add_argument("--kill-agent", action="store_true")
    parser.add_argument("--compile-never-ends", action="store_true")
    return parser.parse_args(argv[:split]), argv[split + 1:]


def slow_saves(asked: list[str]) -> None:
    """``os.replace`` onto a file named in ``asked`` waits first (files.atomic_writer renames with it)."""
    seconds = {name: float(s) for name, _, s in (item.rpartition(":") for item in asked)}
    replace = os.replace

    def slow_replace(source, destination, **kwargs):
        time.sleep(seconds.get(Path(destination).name, 0.0))
        return replace(source, destination, **kwargs)

    os.replace = slow_replace


def kill_at(asked: str, agent: bool) -> None:
    """Wrap the loop's ``one_epoch``: SIGKILL as the epoch asked for begins."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    from petseg_cli.train import loop

    kill_epoch, _, kill_rank = asked.partition(":")
    one_epoch = loop.one_epoch

    def one_epoch_or_die(training, epoch, *args, **kwargs):
        if epoch == int(kill_epoch) and (not kill_rank or int(kill_rank) == training.dist.rank):
            if agent:
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return one_epoch(training, epoch, *args, **kwargs)

    loop.one_epoch = one_epoch_or_die


def compile_never_ends() -> None:
    """Every graph dynamo hands to a backend goes to one that never returns."""
    import threading

    import torch._dynamo

    @torch._dynamo.register_backend
    def never_ends(graph_module, example_inputs):
        threading.Event().wait()

    torch._dynamo.config.debug_backend_override = ">=0:never_ends"


def main() -> None:
    faults, args = parse(sys.argv[1:])
    if args[:1] in (["train"], ["serve"]):  # as petseg's main does, before the faults load torch
        from petseg_cli.machine.allocator import reexecute_with_tcmalloc

        reexecute_with_tcmalloc()
    if faults.slow_save:
        slow_saves(faults.slow_save)
    if faults.kill_at:
        kill_at(faults.kill_at, faults.kill_agent)
    if faults.compile_never_ends:
        compile_never_ends()
    from petseg_cli.cli.app import main as petseg

    sys.argv = [sys.argv[0], *args]
    petseg()


if __name__ == "__main__":
    main()
