"""`petseg serve` against a burst of hostile uploads: many concurrent uploads of one large, highly
compressible PNG (7000x7000 black: about 140 KB on the wire, 147 MB decoded). Exits 1 when a target is missed.

    python benchmarks/serve_abuse.py --run /tmp/h21-runs/resnet34-unet-bs8
    python benchmarks/serve_abuse.py --run RUN --uploads 16 --size 3000     # smaller
    python benchmarks/serve_abuse.py --run RUN -- --max-pixels 60000000     # server options after --
    python benchmarks/serve_abuse.py --run RUN --photo PHOTO --smoke       # 4 uploads of 600x600: seconds

The server runs with its default settings (plus any options after --) on 127.0.0.1 on a free port; the
clients are threads of this process. Targets:
- every answer is 200, 413 or 503 (never 500, never a reset or dropped connection);
- GET /healthz, asked every 100 ms (from another process) from before the burst until its last answer,
  answers in under 1 s;
- the server's peak resident memory (VmHWM in /proc/PID/status) stays under 3 GB;
- afterwards a normal photo gets 200 and the same mask as before the burst.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from common import Server, Verdicts, load, parse_args, run_together, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_PHOTO = REPO.parent / "shared" / "data" / "oxford-pet-sample" / "images"
HEALTH_EVERY_S = 0.1
HEALTH_TARGET_S = 1.0
PEAK_TARGET_BYTES = 3 * 1024**3
ACCEPTED = {200, 413, 503}


def machine() -> str:
    import torch

    return (
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def black_png(size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid``, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def probe_health(url: str, stop, results) -> None:
    """GET /healthz every 100 ms until ``stop`` is set; puts (the seconds of each answer, the failures)
    on ``results``. It runs in its own process, so the burst's client threads never delay its timing."""
    import httpx

    seconds: list[float] = []
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = client.get("/healthz").status_code
                if status != 200:
                    failures.append(f"status {status}")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            seconds.append(time.perf_counter() - started)
            stop.wait(HEALTH_EVERY_S)
    results.put((seconds, failures))


class HealthProbe:
    def __init__(self, url: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.stop, self.results = context.Event(), context.Queue()
        self.process = context.Process(target=probe_health, args=(url, self.stop, self.results), daemon=True)
        self.process.start()
        self.seconds: list[float] = []
        self.failures: list[str] = []

    def finish(self) -> None:
        self.stop.set()
        self.seconds, self.failures = self.results.get(timeout=120)
        self.process.join(timeout=60)


def burst(url: str, body: bytes, uploads: int) -> tuple[Counter, list[str], float]:
    """``uploads`` concurrent POST /v1/masks of ``body``: the statuses, the connection failures, seconds."""
    import httpx

    statuses: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(uploads)

    def one() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            start.wait()
            try:
                status = client.post("/v1/masks", content=body, headers={"Content-Type": "image/png"}).status_code
                with lock:
                    statuses[status] += 1
            except httpx.HTTPError as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")

    return statuses, failures, run_together(one, uploads)


def normal_mask(url: str, photo: bytes) -> tuple[int, bytes]:
    import httpx

    answer = httpx.post(url + "v1/masks", content=photo, timeout=120)
    return answer.status_code, answer.content


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run (or an exported .onnx file)")
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--size", type=int, default=7000, help="the PNG's width and height")
    parser.add_argument("--photo", type=Path, default=None, help="the normal photo (default: the sample's first)")
    parser.add_argument("server_options", nargs="*", help="after --: options for petseg serve")
    args = parse_args(parser, smoke={"uploads": 4, "size": 600})
    photo_path = args.photo or next(iter(sorted(DEFAULT_PHOTO.glob("*.jpg"))), None)
    if photo_path is None:
        sys.exit(f"no photo in {DEFAULT_PHOTO}: pass --photo")
    photo = photo_path.read_bytes()
    body = black_png(args.size)
    verdicts = Verdicts(smoke=args.smoke)
    say(machine())
    say(f"upload: {args.size}x{args.size} black PNG, {len(body) / 1024:.0f} KB, x {args.uploads} at once; server options: {args.server_options or 'defaults'}")

    server = Server(args.run, args.server_options)
    pid = server.process.pid
    say(f"server ready at {server.url} (pid {pid}): RSS {memory(pid)['VmRSS'] / 1024**3:.2f} GB ({load()})")
    before = normal_mask(server.url, photo)
    probe = HealthProbe(server.url)
    time.sleep(1)  # the probe's first answers come before the burst
    statuses, failures, seconds = burst(server.url, body, args.uploads)
    probe.finish()
    after = normal_mask(server.url, photo)
    peak = memory(pid)["VmHWM"]
    code = server.stop()

    shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
    unexpected = {s: n for s, n in statuses.items() if s not in ACCEPTED}
    say(f"burst: {sum(statuses.values())} answers in {seconds:.1f} s ({shown}); connection failures: {len(failures)} ({load()})")
    for failure in failures[:5]:
        say(f"  {failure}")
    say(f"  every answer 200, 413 or 503, no failed connection: {verdicts.check(not unexpected and not failures, 'answers')}")
    slowest = max(probe.seconds) if probe.seconds else float("inf")
    say(
        f"/healthz: {len(probe.seconds)} probes, slowest {slowest * 1000:.0f} ms, failures {len(probe.failures)}: "
        f"{verdicts.check(slowest < HEALTH_TARGET_S and not probe.failures, 'healthz')} (target < {HEALTH_TARGET_S:g} s)"
    )
    say(f"server peak RSS (VmHWM): {peak / 1024**3:.2f} GB: {verdicts.check(peak < PEAK_TARGET_BYTES, 'peak')} (target < 3 GB)")
    same = after[0] == 200 and after == before
    say(f"normal photo ({photo_path.name}) after the burst: {after[0]}, same mask as before: {verdicts.check(same, 'photo')}")
    say(f"server exit code after SIGTERM: {code}")
    if verdicts.missed:
        say(f"MISSED: {', '.join(verdicts.missed)}")
    return verdicts.exit_code()


if __name__ == "__main__":
    sys.exit(main())
