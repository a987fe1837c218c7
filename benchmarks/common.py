"""What every benchmark script prints with: the machine's load beside each figure, targets met or missed,
and the ``--smoke`` mode every script has.

The scripts run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path`` and they import it
as ``common``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
READY_TIMEOUT_S = 300


SMOKE_HELP = (
    "smoke test: the same code path end to end at tiny sizes (32 px, a few photos, one repeat, one epoch, short "
    "durations), in seconds, writing only to a temporary directory; options given as well still apply. Its "
    "figures mean nothing: a missed target is printed but does not make the exit status 1"
)
SCRATCH = object()  # a smoke default that stands for a temporary directory, deleted when the script ends


def scratch_directory() -> Path:
    """A new temporary directory, deleted when the script exits."""
    directory = Path(tempfile.mkdtemp(prefix="petseg-smoke-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def parse_args(parser: argparse.ArgumentParser, smoke: dict[str, object], argv: list[str] | None = None) -> argparse.Namespace:
    """The parser's arguments, and ``--smoke``: with it, ``smoke`` (destination -> value; SCRATCH: a temporary
    directory) replaces the parser's defaults, so that an option given on the command line still wins."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    unknown = set(smoke) - set(vars(args))
    if unknown:
        raise ValueError(f"smoke defaults for no option: {sorted(unknown)}")
    if args.smoke:
        parser.set_defaults(**{key: scratch_directory() if value is SCRATCH else value for key, value in smoke.items()})
        args = parser.parse_args(argv)
        say("smoke mode: tiny sizes, the figures mean nothing and no target is enforced")
    return args


@dataclass
class Verdicts:
    """The targets a run missed; ``check`` says "met" or "MISSED" for the line that shows a figure. In a
    smoke run (``smoke``) missed targets do not fail it."""

    smoke: bool = False
    missed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> str:
        if not ok:
            self.missed.append(what)
        return "met" if ok else "MISSED"

    def exit_code(self) -> int:
        """1 when a target was missed, except in a smoke run (which says how many it missed)."""
        if self.smoke and self.missed:
            say(f"smoke mode: {len(self.missed)} target(s) missed at tiny sizes, not enforced")
            return 0
        return 1 if self.missed else 0


def run_together(target, count: int) -> float:
    """``target`` in ``count`` threads started together; the seconds until the last one ends."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def load() -> str:
    """The load averages, printed beside each figure: on a shared machine only ratios taken together count."""
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(text: str = "") -> None:
    print(text, flush=True)


class Server:
    """`petseg serve RUN` on a free loopback port, this checkout importable; ready once /readyz says so."""

    def __init__(self, run: Path, options: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "petseg_cli", "serve", str(run), "--port", "0", *options], env=ENV, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()
        self._wait_until_ready()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in list(self.lines):
                found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
                if found:
                    return found.group(1)
            time.sleep(0.05)
        self.process.kill()
        sys.exit("the server did not start:\n" + "\n".join(self.lines))

    def _wait_until_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + "readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.process.kill()
        sys.exit("the model did not load:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)
