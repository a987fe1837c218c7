"""`petseg serve` under load, against `petseg infer` over the same photos in one process; exits 1 when a
target is missed.

    python benchmarks/serve_load.py                              # trains a 1-epoch resnet34-unet first
    python benchmarks/serve_load.py --run /tmp/serve-bench-run   # trains it there once, reuses it after
    python benchmarks/serve_load.py --requests 80 --clients 4    # shorter
    python benchmarks/serve_load.py --smoke --run RUN --data-dir DIR   # 4 requests from 2 clients: seconds

Everything stays on this machine: the server listens on 127.0.0.1 on a free port, and the clients are
threads of this process. Each phase sends a bounded number of requests and stops at --phase-limit-s.

Phases, in this order, with the machine's load printed beside each (on a shared machine only ratios
measured in one run mean something):
- serving with batching on (--max-batch, --batch-wait-ms) and off (--max-batch 1): N requests of the
  sample's test photos (cycled) from C concurrent clients; throughput (images/s), p50/p95/p99 latency
  and errors (any answer but 200, or a mask of the wrong size);
- ``petseg infer`` over the same photos in one process (batch size 8, its default): images/s over the
  whole process, and after start-up (the time of the same command on one photo subtracted).

Targets: no errors; batched serving >= 0.8x the one-process infer throughput (after start-up).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from common import ENV, Server, Verdicts, load, parse_args, run_together, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pet-sample"
PETSEG = [sys.executable, "-m", "petseg_cli"]

THROUGHPUT_TARGET = 0.8  # batched serving vs one-process infer
REQUEST_TIMEOUT_S = 120


def machine() -> str:
    import torch

    from petseg_cli.machine.precision import cpu_has_native_bf16, read_cpu_flags

    return (
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16(read_cpu_flags())}"
    )


def test_photos(data_dir: Path) -> list[Path]:
    """The sample's test split, as files (the release's quirks included: one is a PNG named .jpg)."""
    names = [line.split()[0] for line in (data_dir / "annotations" / "test.txt").read_text().splitlines() if line.strip()]
    photos = [data_dir / "images" / f"{name}.jpg" for name in names]
    return [p for p in photos if p.is_file()]


def ensure_run(run: Path, data_dir: Path) -> Path:
    """``run`` if it is a trained run; else train resnet34-unet for one epoch into it (accuracy does not matter)."""
    if (run / "best.pth").is_file():
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    say(f"training a 1-epoch resnet34-unet into {run} ({load()}) ...")
    command = [*PETSEG, "train", "--model", "resnet34-unet", "--data-dir", str(data_dir), "-e", "1",
               "--runs-dir", str(run.parent), "--name", run.name]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr}")
    return run


# -- serving --------------------------------------------------------------------------------------
@dataclass
class Load:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.latencies)


def expected_size(data: bytes) -> tuple[int, int]:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).size


def send_load(url: str, bodies: list[bytes], requests: int, clients: int, limit_s: float) -> Load:
    """``requests`` POSTs of ``bodies`` (cycled) from ``clients`` threads, each with its own connection."""
    import httpx

    sizes = [expected_size(body) for body in bodies]
    result = Load()
    counter = iter(range(requests))
    lock = threading.Lock()
    deadline = time.monotonic() + limit_s

    def client() -> None:
        from PIL import Image

        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as session:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                body = bodies[index % len(bodies)]
                started = time.perf_counter()
                try:
                    answer = session.post("/v1/masks", content=body)
                    problem = None if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:200]}"
                    if problem is None:
                        with Image.open(io.BytesIO(answer.content)) as mask:
                            if mask.size != sizes[index % len(bodies)]:
                                problem = f"mask {mask.size} for a {sizes[index % len(bodies)]} photo"
                except httpx.HTTPError as exc:
                    problem, answer = f"{type(exc).__name__}: {exc}", None
                elapsed = time.perf_counter() - started
                with lock:
                    result.latencies.append(elapsed)
                    if problem:
                        result.errors.append(problem)
                    elif answer is not None:
                        result.batch_sizes.append(int(answer.headers.get("x-petseg-batch-size", 0)))

    result.seconds = run_together(client, clients)
    return result


def percentile(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def serve_phase(name: str, run: Path, options: list[str], bodies: list[bytes], args: argparse.Namespace) -> dict:
    server = Server(run, options)
    send_load(server.url, bodies, args.warm_up, min(args.clients, args.warm_up), args.phase_limit_s)
    before = load()
    result = send_load(server.url, bodies, args.requests, args.clients, args.phase_limit_s)
    code = server.stop()
    ms = [s * 1000 for s in result.latencies]
    throughput = (result.done - len(result.errors)) / result.seconds if result.seconds else 0.0
    mean_batch = statistics.mean(result.batch_sizes) if result.batch_sizes else float("nan")
    say(
        f"{name:<22} {result.done:>4}/{args.requests} requests in {result.seconds:6.1f} s  {throughput:6.2f} images/s  "
        f"p50 {percentile(ms, 50):7.0f} ms  p95 {percentile(ms, 95):7.0f} ms  p99 {percentile(ms, 99):7.0f} ms  "
        f"errors {len(result.errors)}  mean batch {mean_batch:.1f}  exit {code}  ({before})"
    )
    for error in result.errors[:5]:
        say(f"    error: {error}")
    unsent = args.requests - result.done
    if unsent:
        say(f"    {unsent} requests not sent: the phase reached --phase-limit-s {args.phase_limit_s:g} (not errors)")
    return {"throughput": throughput, "errors": len(result.errors) + (code != 0), "unsent": unsent}


# -- one-process infer ----------------------------------------------------------------------------
def infer_seconds(run: Path, photos: list[Path], out: Path) -> float:
    command = [*PETSEG, "infer", *map(str, photos), "-o", str(out), "--run", str(run), "--overwrite"]
    started = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"petseg infer failed:\n{done.stderr}")
    return seconds


def infer_phase(run: Path, photos: list[Path], work: Path) -> float:
    before = load()
    one = infer_seconds(run, photos[:1], work / "one")
    every = infer_seconds(run, photos, work / "all")
    whole = len(photos) / every
    steady = (len(photos) - 1) / max(every - one, 1e-9)
    say(
        f"{'petseg infer':<22} {len(photos):>4} photos in {every:6.1f} s  {whole:6.2f} images/s over the whole process, "
        f"{steady:6.2f} images/s after start-up (one photo took {one:.1f} s)  ({before})"
    )
    return steady


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run to serve (trained there, 1 epoch, when it does not exist; default: a temporary one)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the sample whose test photos are sent")
    parser.add_argument("--requests", type=int, default=200, help="requests per serving phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=16, help="--max-batch of the batched server")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="--batch-wait-ms of the batched server")
    parser.add_argument("--phase-limit-s", type=float, default=900.0, help="stop sending a phase's requests after this long")
    parser.add_argument("--warm-up", type=int, default=8, help="requests per server before timing (the first model calls are slower)")
    args = parse_args(parser, smoke={"requests": 4, "clients": 2, "max_batch": 2, "warm_up": 1, "phase_limit_s": 120.0})
    if args.requests < 1 or args.clients < 1 or args.warm_up < 1:
        parser.error("--requests, --clients and --warm-up must be at least 1")

    photos = test_photos(args.data_dir)
    if not photos:
        sys.exit(f"no test photos under {args.data_dir}")
    bodies = [p.read_bytes() for p in photos]
    say(machine())
    with tempfile.TemporaryDirectory(prefix="petseg-serve-load-") as scratch:
        run = ensure_run(args.run or Path(scratch) / "runs" / "serve-bench", args.data_dir)
        say(f"run: {run}; {len(photos)} test photos of {args.data_dir}; {args.requests} requests from {args.clients} clients per phase")
        on = serve_phase("serve, batching on", run, ["--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)], bodies, args)
        off = serve_phase("serve, batching off", run, ["--max-batch", "1"], bodies, args)
        infer = infer_phase(run, photos, Path(scratch))

    ratio = on["throughput"] / infer
    say(f"batching on vs off: {on['throughput'] / off['throughput']:.2f}x")
    verdicts = Verdicts(smoke=args.smoke)
    say(f"errors: {on['errors'] + off['errors']} (target 0): {verdicts.check(on['errors'] + off['errors'] == 0, 'no errors')}"
        + (f"; {on['unsent'] + off['unsent']} requests not sent within the time limit" if on["unsent"] + off["unsent"] else ""))
    say(f"batched serving vs one-process infer: {ratio:.2f}x (target >= {THROUGHPUT_TARGET}x): "
        f"{verdicts.check(ratio >= THROUGHPUT_TARGET, 'throughput')}")
    return verdicts.exit_code()


if __name__ == "__main__":
    sys.exit(main())
