"""petseg's speed against the reference pipeline, side by side in one run; exits 1 when a target is missed.

    python benchmarks/train_speed.py                      # everything, on the shared sample
    python benchmarks/train_speed.py --repeats 1 --accuracy-epochs 3 --models resnet34-unet
    python benchmarks/train_speed.py --smoke --data-dir DIR   # every section once, resnet34-unet at 32 px, 4 images

Prints, with the machine's load at each measurement (on a shared machine only ratios mean something):
- end-to-end training images/s (a full epoch of the train split after one warm-up epoch), petseg's
  defaults and the reference (benchmarks/reference.py) measured alternately, and their ratio:
  >= 4.0x for resnet34-unet, >= 6.0x for unet; with --compile also petseg --compile (its warm-up:
  the first step's compilation, and the whole first epoch); what compile = "auto" decided, and why;
- each petseg figure as a share of the machine's 3x3 convolution peak (the faster of fp32 NCHW and bf16
  NHWC), measured on the spot
  (images/s x the model's forward + backward FLOPs per image, counted by torch's FlopCounterMode);
- precision = "auto" against --precision bf16 and --precision fp32, alternated, epoch-2 images/s: auto
  (which times a few steps of each and keeps the faster) must run within 10% of the faster of the two;
- accuracy: best val Dice after N epochs of resnet34-unet, petseg's defaults vs fp32 eager NCHW (<= 0.01);
- ``petseg --help`` wall time (< 0.3 s);
- ``petseg infer one.jpg -o mask.png`` wall time vs ``python -c "import torch"`` (<= 1.5x);
- peak memory (RSS) of training resnet34-unet at batch 16, and how much of it is the memory-mapped cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from common import Verdicts, load, parse_args, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pet-sample"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

THROUGHPUT_TARGETS = {"resnet34-unet": 4.0, "unet": 6.0}
COMPILE_TARGET = ("resnet34-unet", 4.0)
DICE_TOLERANCE = 0.01
HELP_TARGET_S = 0.3
INFER_TARGET_RATIO = 1.5
FP32_EAGER = ["--precision", "fp32", "--no-channels-last", "--no-compile"]


# -- running a process and watching its memory ---------------------------------------------------
def watch_memory(process: subprocess.Popen, peaks: dict[str, int]) -> None:
    """Largest VmRSS, RssAnon and RssFile (kB) of ``process`` while it runs."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    peaks[key] = max(peaks.get(key, 0), int(value.split()[0]))
        except (OSError, ValueError):
            pass
        time.sleep(0.2)


def run(command: list[str], cwd: Path, peaks: dict[str, int] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    process = subprocess.Popen(command, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch_memory, args=(process, peaks if peaks is not None else {}), daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    watcher.join()
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{stderr[-3000:]}")
    return result


def petseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "petseg_cli", *args]


class Trainer:
    """Runs petseg train and the reference in a scratch directory."""

    numbers = itertools.count(1)  # run names, shared: two trainers (all data, a subset) share the scratch directory

    def __init__(self, data_dir: Path, batch_size: int, scratch: Path, device: str, image_size: int) -> None:
        self.data_dir, self.batch_size, self.scratch, self.device = data_dir, batch_size, scratch, device
        self.image_size = image_size
        self.last: subprocess.CompletedProcess | None = None  # the last petseg train (its stderr)
        self.env: dict[str, str] | None = None  # the trainings' environment (None: ENV)
        self.finished: dict[tuple, tuple[dict, Path]] = {}  # the trainings run so far, by what they were asked

    def petseg_history(self, model: str, epochs: int, extra: list[str], batch_size: int | None = None,
                       peaks: dict[str, int] | None = None, reuse: bool = False) -> tuple[dict, Path]:
        """The history and run directory of ``petseg train`` with these options. With ``reuse``, a training
        already run with the same options (in --smoke the memory and accuracy runs are one command) is not
        run again: for what it records other than time, a seeded run's second run would be the same."""
        key = (model, epochs, tuple(extra), batch_size or self.batch_size, tuple(sorted((self.env or ENV).items())))
        if reuse and key in self.finished:
            return self.finished[key]
        name = f"run{next(self.numbers)}"
        self.last = run(petseg("train", "--data-dir", str(self.data_dir), "--model", model, "-e", str(epochs),
                   "-b", str(batch_size or self.batch_size), "--patience", str(epochs), "--device", self.device,
                   "--image-size", str(self.image_size),
                   "--runs-dir", str(self.scratch), "--name", name, *extra), self.scratch, peaks, self.env)
        run_dir = self.scratch / name
        self.finished[key] = json.loads((run_dir / "history.json").read_text()), run_dir
        return self.finished[key]

    def petseg_speed(self, model: str, extra: list[str]) -> tuple[float, str]:
        """images/s of the second epoch, and a note: what compile decided, and the warm-up it cost."""
        history, run_dir = self.petseg_history(model, 2, extra)
        facts = tomllib.loads((run_dir / "config.toml").read_text())["run"]
        note = f"{facts.get('precision')}, {'NHWC' if facts.get('channels_last') else 'NCHW'}, compile {'on' if facts.get('compile') else 'off'}"
        compiled = re.search(r"compiled the training step(?: at \d+ px)? in ([0-9.]+) s", self.last.stderr)
        if compiled:
            first, second = (e["seconds"] for e in history["epochs"][:2])
            note += f"; warm-up: first step compiled in {compiled.group(1)} s, epoch 1 {first:.1f} s vs epoch 2 {second:.1f} s"
        elif facts.get("compile_reason", "").startswith("auto"):
            note += f" ({facts['compile_reason']})"
        return history["epochs"][-1]["images_per_s"], note

    def reference_speed(self, model: str) -> float:
        result = run([sys.executable, str(REPO / "benchmarks" / "reference.py"), "--data-dir", str(self.data_dir),
                      "--model", model, "-b", str(self.batch_size), "-e", "2", "--image-size", str(self.image_size)],
                     self.scratch)
        return json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]


# -- the measurements -----------------------------------------------------------------------------
def conv_peak_gflops(dtype: str, seconds: float) -> float:
    """This machine's 3x3 convolution speed now, in ``dtype`` ("bf16": NHWC, what oneDNN's bf16 kernels
    use; "fp32": NCHW), forward, 64 channels, 128 px, batch 8, GFLOP/s: the best of repeated calls, so a
    moment of load from others counts as little as possible."""
    import torch

    bf16 = dtype == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    kind = torch.bfloat16 if bf16 else torch.float32
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(kind, memory_format=layout)
    x = torch.randn(8, 64, 128, 128, dtype=kind).contiguous(memory_format=layout)
    flops = 2 * 8 * 64 * 64 * 9 * 128 * 128
    best, deadline = float("inf"), time.perf_counter() + seconds
    with torch.inference_mode():
        conv(x)
        while best == float("inf") or time.perf_counter() < deadline:  # at least one timed call
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def step_gflops(model: str, size: int) -> float:
    """Forward + backward FLOPs of one image through ``model`` (torch's FlopCounterMode), in GFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from petseg_cli.models import build_model

    net = build_model(model)
    with FlopCounterMode(display=False) as counter:  # two images: at 32 px BatchNorm sees 1x1 maps, one value per channel
        net(torch.randn(2, 3, size, size)).sum().backward()
    return counter.get_total_flops() / 2 / 1e9


def throughput(trainer: Trainer, args: argparse.Namespace, verdicts: Verdicts) -> None:
    models, repeats = args.models, args.repeats
    say(f"== end-to-end training images/s, batch {trainer.batch_size}, {trainer.image_size} px, epoch 2 of 2 (epoch 1 warms up) ==")
    peaks = {dtype: conv_peak_gflops(dtype, args.conv_seconds) for dtype in ("fp32", "bf16")}
    peak = max(peaks.values())
    say(f"  3x3 convolution peak measured now: fp32 NCHW {peaks['fp32']:,.0f} GFLOP/s, bf16 NHWC {peaks['bf16']:,.0f} "
        f"GFLOP/s; shares below are of the faster   ({load()})")
    work = {model: step_gflops(model, trainer.image_size) for model in models}
    say(f"  forward + backward per image at {trainer.image_size} px: " + ", ".join(f"{m} {g:.1f} GFLOP" for m, g in work.items()))
    variants = [(model, "default", [], THROUGHPUT_TARGETS[model]) for model in models]
    if args.compile and COMPILE_TARGET[0] in models:
        variants.append((COMPILE_TARGET[0], "--compile", ["--compile"], COMPILE_TARGET[1]))
    for model, label, extra, target in variants:
        ours, theirs = [], []
        for repeat in range(repeats):
            # Alternate which goes first, so a change of load hits both sides alike.
            order = ["reference", "petseg"] if repeat % 2 == 0 else ["petseg", "reference"]
            for side in order:
                note = ""
                if side == "reference":
                    speed = trainer.reference_speed(model)
                else:
                    speed, note = trainer.petseg_speed(model, extra)
                (theirs if side == "reference" else ours).append(speed)
                share = speed * work[model] / peak
                say(f"  {model:14s} {side:9s} {label if side == 'petseg' else '':9s} {speed:7.3f} images/s  "
                    f"{share:5.1%} of the conv peak   ({load()}){'  ' + note if note else ''}")
        ratio = statistics.median(ours) / statistics.median(theirs)
        verdict = verdicts.check(ratio >= target, f"{model} {label} speed-up {ratio:.2f}x < {target}x")
        say(f"  {model} petseg {label} / reference: {ratio:.2f}x (median of {repeats}; target >= {target}x): {verdict}")


AUTO_TOLERANCE = 0.10  # auto within 10% of the faster forced precision


def plant_stale_verdicts(trainer: Trainer, models: list[str]) -> Path:
    """A precision cache of its own for this section, holding what the earlier probe cached on a busy
    machine: fp32 for every model at this size (its file format, its keys). auto must not trust it."""
    from petseg_cli.machine.devices import resolve_device
    from petseg_cli.machine.probe import CACHE_FILE, machine_key

    cache_home = trainer.scratch / "precision-cache"
    (cache_home / "petseg").mkdir(parents=True, exist_ok=True)
    device = resolve_device(trainer.device)
    stale = {machine_key(device, model, trainer.image_size, 1).rsplit(" | batch", 1)[0]:
             {"precision": "fp32", "seconds": {"fp32": 10.85, "bf16": 15.79}} for model in models}
    (cache_home / "petseg" / CACHE_FILE).write_text(json.dumps(stale))
    trainer.env = {**ENV, "XDG_CACHE_HOME": str(cache_home)}
    return cache_home


def precision_choice(trainer: Trainer, models: list[str], repeats: int, verdicts: Verdicts) -> None:
    """auto, bf16 and fp32 side by side: each a 2-epoch run (epoch 2 timed), in rotating order, auto
    starting from a cache where a stale fp32 verdict was planted."""
    say(f"== precision: auto (measured) vs --precision bf16 vs --precision fp32, batch {trainer.batch_size}, epoch 2 of 2 ==")
    say(f"  a stale fp32 verdict planted first in {plant_stale_verdicts(trainer, models)} (the earlier probe's format)")
    labels = ["auto", "bf16", "fp32"]
    for model in models:
        speeds: dict[str, list[float]] = {label: [] for label in labels}
        for repeat in range(repeats):
            for label in labels[repeat % 3:] + labels[: repeat % 3]:
                speed, note = trainer.petseg_speed(model, ["--precision", label, "--no-compile"])
                speeds[label].append(speed)
                chose = ""
                if label == "auto":  # what it measured, as train said it
                    said = re.search(r"precision auto chose .*", trainer.last.stderr)
                    chose = "  " + (said.group(0).strip() if said else f"chose {note.split(',')[0]}")
                say(f"  {model:14s} {label:5s} {speed:7.3f} images/s   ({load()}){chose}")
        median = {label: statistics.median(values) for label, values in speeds.items()}
        fastest = max(median["bf16"], median["fp32"])
        share = median["auto"] / fastest
        verdict = verdicts.check(share >= 1 - AUTO_TOLERANCE, f"{model} auto at {share:.0%} of the faster precision")
        say(f"  {model}: auto {median['auto']:.3f}, bf16 {median['bf16']:.3f}, fp32 {median['fp32']:.3f} images/s "
            f"(medians of {repeats}); auto / faster = {share:.1%} (target >= {1 - AUTO_TOLERANCE:.0%}): {verdict}")
    trainer.env = None


def accuracy(trainer: Trainer, epochs: int, verdicts: Verdicts) -> None:
    say(f"== accuracy: resnet34-unet, {epochs} epochs, seed 0, best val Dice ==")
    best = {}
    for label, extra in (("petseg default", []), ("fp32 eager NCHW", FP32_EAGER)):
        history, _ = trainer.petseg_history("resnet34-unet", epochs, extra, reuse=True)
        best[label] = history["summary"]["best_val_dice"]
        say(f"  {label:16s} best val Dice {best[label]:.4f} (epoch {history['summary']['best_epoch']})   ({load()})")
    gap = abs(best["petseg default"] - best["fp32 eager NCHW"])
    verdict = verdicts.check(gap <= DICE_TOLERANCE, f"val Dice differs by {gap:.4f} > {DICE_TOLERANCE}")
    say(f"  difference {gap:.4f} (target <= {DICE_TOLERANCE}): {verdict}")


def wall(command: list[str], cwd: Path, repeats: int) -> float:
    """Median wall seconds of ``command`` (no memory watcher: its polling would add to the time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return statistics.median(times)


def help_time(scratch: Path, repeats: int, verdicts: Verdicts) -> None:
    seconds = wall(petseg("--help"), scratch, repeats)
    verdict = verdicts.check(seconds < HELP_TARGET_S, f"petseg --help {seconds:.2f} s >= {HELP_TARGET_S} s")
    say(f"== petseg --help: {seconds:.3f} s wall, median of {repeats} (target < {HELP_TARGET_S} s): {verdict}   ({load()})")


def infer_available(scratch: Path) -> bool:
    result = subprocess.run(petseg("infer", "--help"), cwd=scratch, env=ENV, capture_output=True, text=True)
    return result.returncode == 0 and "not built yet" not in result.stdout and "--run" in result.stdout


def infer_time(scratch: Path, run_dir: Path, image: Path, repeats: int, verdicts: Verdicts) -> None:
    if not infer_available(scratch):
        say("== petseg infer: SKIPPED: `petseg infer` is not available in this checkout yet")
        return
    ours = wall(petseg("infer", str(image), "-o", "mask.png", "--run", str(run_dir), "--overwrite"), scratch, repeats)
    torch_import = wall([sys.executable, "-c", "import torch"], scratch, repeats)
    ratio = ours / torch_import
    verdict = verdicts.check(ratio <= INFER_TARGET_RATIO, f"infer {ratio:.2f}x import torch > {INFER_TARGET_RATIO}x")
    say(f"== petseg infer one.jpg -o mask.png: {ours:.2f} s; python -c 'import torch': {torch_import:.2f} s; "
        f"ratio {ratio:.2f}x (target <= {INFER_TARGET_RATIO}x): {verdict}   ({load()})")


def memory(trainer: Trainer, batch_size: int) -> Path:
    """Train resnet34-unet at ``batch_size`` for one epoch; print its peak RSS. Returns the run directory."""
    peaks: dict[str, int] = {}
    _, run_dir = trainer.petseg_history("resnet34-unet", 1, [], batch_size=batch_size, peaks=peaks)
    from petseg_cli.data.cache import cache_root

    cache_mb = sum(f.stat().st_size for f in cache_root(trainer.data_dir).rglob("*.npy")) / 2**20
    say(f"== peak memory, resnet34-unet batch {batch_size}, {trainer.image_size} px: RSS {peaks.get('VmRSS', 0) / 1024:.0f} MB "
        f"(anonymous {peaks.get('RssAnon', 0) / 1024:.0f} MB, file-backed {peaks.get('RssFile', 0) / 1024:.0f} MB; "
        f"the memory-mapped cache files hold {cache_mb:.0f} MB)   ({load()})")
    return run_dir


def subset(data_dir: Path, train_images: int, scratch: Path) -> Path:
    """A data directory of links to the first trainval lines that give ``train_images`` train images
    (and their val images), for shorter epochs on a slow machine."""
    lines = (data_dir / "annotations" / "trainval.txt").read_text().splitlines()
    kept = lines[: train_images + -(-train_images // 9)]  # every 10th line is a val image
    root = scratch / f"{data_dir.name}-first-{train_images}"
    (root / "annotations" / "trimaps").mkdir(parents=True)
    (root / "images").mkdir()
    for line in kept:
        name = line.split()[0]
        for part in (Path("images") / f"{name}.jpg", Path("annotations") / "trimaps" / f"{name}.png"):
            (root / part).symlink_to(data_dir / part)
    (root / "annotations" / "trainval.txt").write_text("\n".join(kept) + "\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", nargs="+", default=list(THROUGHPUT_TARGETS), choices=list(THROUGHPUT_TARGETS))
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="alternating petseg/reference pairs per model")
    parser.add_argument("--compile", action="store_true", help="also measure petseg --compile (resnet34-unet)")
    parser.add_argument("--accuracy-epochs", type=int, default=8, help="0 skips the accuracy check")
    parser.add_argument("--train-images", type=int, default=0,
                        help="time epochs of only the first N train images (0: the whole train split)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--precision-repeats", type=int, default=2, help="rounds of auto/bf16/fp32 (0 skips them)")
    parser.add_argument("--skip-memory", action="store_true", help="skip peak RSS (and infer, which uses its run)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU see also benchmarks/gpu_speed.py)")
    parser.add_argument("--image-size", type=int, default=256, help="the image size of every training run")
    parser.add_argument("--memory-batch", type=int, default=16, help="the batch size peak memory is measured at")
    parser.add_argument("--help-repeats", type=int, default=5, help="`petseg --help` calls timed (the median counts)")
    parser.add_argument("--infer-repeats", type=int, default=3, help="`petseg infer` and `import torch` calls timed")
    parser.add_argument("--conv-seconds", type=float, default=3.0, help="how long each 3x3 convolution peak is measured")
    smoke = {"models": ["resnet34-unet"], "batch_size": 4, "accuracy_epochs": 1, "train_images": 4, "precision_repeats": 1,
             "image_size": 32, "memory_batch": 4, "help_repeats": 1, "infer_repeats": 1, "conv_seconds": 0.2}
    args = parse_args(parser, smoke)

    data_dir = args.data_dir.resolve()
    if not data_dir.is_dir():
        raise SystemExit(f"no data directory {data_dir}: pass --data-dir")
    import torch
    from petseg_cli.machine import allocator
    from petseg_cli.machine.precision import cpu_bf16_is_fast, cpu_has_native_bf16, read_cpu_flags

    flags = read_cpu_flags()
    say(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16(flags)}, "
        f"bf16 matrix units (AMX): {cpu_bf16_is_fast(flags)} (auto measures which is faster), "
        f"tcmalloc: {allocator.find_tcmalloc() or 'not installed'}; {load()}")
    verdicts = Verdicts(smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        scratch = Path(tmp)
        trainer = Trainer(data_dir, args.batch_size, scratch, args.device, args.image_size)
        help_time(scratch, args.help_repeats, verdicts)
        if not args.skip_memory:
            run_dir = memory(trainer, args.memory_batch)  # also builds the cache, before any timing
            image = sorted((data_dir / "images").glob("*.jpg"))[0]
            infer_time(scratch, run_dir, image, args.infer_repeats, verdicts)
        timed = trainer  # one subset for both timed sections (subset() makes its directory once)
        if args.train_images and (not args.skip_throughput or args.precision_repeats):
            timed = Trainer(subset(data_dir, args.train_images, scratch), args.batch_size, scratch, args.device, args.image_size)
            say(f"(timing epochs of the first {args.train_images} train images only: --train-images)")
        if not args.skip_throughput:
            throughput(timed, args, verdicts)
        if args.precision_repeats:
            precision_choice(timed, args.models, args.precision_repeats, verdicts)
        if args.accuracy_epochs:
            accuracy(trainer, args.accuracy_epochs, verdicts)
    say(f"done ({load()}): " + ("all targets met" if not verdicts.missed else "missed: " + "; ".join(verdicts.missed)))
    sys.exit(verdicts.exit_code())


if __name__ == "__main__":
    main()
