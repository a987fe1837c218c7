"""Training images/s on one GPU: the model step alone on synthetic tensors, and petseg's full pipeline.

    python benchmarks/gpu_speed.py                                # both models, batch 32, 256x256
    python benchmarks/gpu_speed.py --compile --models resnet34-unet   # and --no-compile; default: petseg's auto

For each model:
- synthetic: random uint8 batches already on the GPU, normalised and pushed through forward, backward
  and Adam exactly as petseg's training step does (precision auto, channels_last); images/s and peak
  GPU memory. Goals on one H100: resnet34-unet >= 1,000 images/s, unet >= 400.
- pipeline: petseg's own training loop on the shared sample from the decode-once cache (DataLoader workers,
  augmentation, pinned memory, asynchronous copies, the same step); images/s over several epochs
  after a warm-up epoch. Goal: >= 80% of synthetic.
- data side alone: the same DataLoader iterated without the model, to tell what limits the pipeline.
Exits 1 when a goal is missed. ``--device cpu`` runs the same code on a CPU. ``--smoke`` runs it for
resnet34-unet at 32 px, batch 4, on 4 train images, one step and one epoch each, on the GPU when there is one and on the CPU
otherwise (peak GPU memory then reads nan), with the goals not enforced.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pet-sample"

import torch  # noqa: E402

from common import Verdicts, parse_args  # noqa: E402
from petseg_cli.machine.distributed import Context  # noqa: E402
from petseg_cli.config.settings import Settings  # noqa: E402
from petseg_cli.train.loaders import load_data  # noqa: E402
from petseg_cli.train.callbacks import Loop  # noqa: E402
from petseg_cli.train.loop import train_epoch, train_step  # noqa: E402
from petseg_cli.train.machine import prepare_machine  # noqa: E402
from petseg_cli.train.setup import Training  # noqa: E402

SYNTHETIC_GOALS = {"resnet34-unet": 1000.0, "unet": 400.0}  # images/s on one H100
PIPELINE_SHARE = 0.8


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settings_for(args: argparse.Namespace, model: str) -> Settings:
    settings = Settings()
    settings.model.name = model
    settings.data.data_dir = str(args.data_dir)
    settings.data.image_size = args.image_size
    settings.data.limit = args.limit
    t = settings.train
    t.batch_size, t.device, t.precision = args.batch_size, args.device, args.precision
    t.compile = "auto" if args.compile is None else args.compile
    return settings


def synthetic(trainer: Training, batch_size: int, size: int, steps: int) -> tuple[float, float, float]:
    """images/s of the training step alone, peak GPU memory in GiB, and the warm-up's seconds."""
    device = trainer.device
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    masks = torch.randint(0, 2, (batch_size, size, size), device=device)
    trainer.train_net.train()

    def step() -> None:
        train_step(trainer, images, masks, frozen=[])

    warm_up = time.perf_counter()
    for _ in range(max(steps // 3, 2)):  # warm-up: cuDNN autotuning, compilation
        step()
    synchronize(device)
    warm_up = time.perf_counter() - warm_up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return steps * batch_size / seconds, peak, warm_up


def pipeline(trainer: Training, epochs: int) -> float:
    """images/s of petseg's training epochs (data, augmentation, copies, step), after a warm-up epoch."""
    stop = threading.Event()
    seen, seconds = 0, 0.0
    for epoch in range(epochs + 1):
        trainer.train_loader.sampler.set_epoch(epoch)
        synchronize(trainer.device)
        start = time.perf_counter()
        _, images = train_epoch(Loop(trainer, stop))
        synchronize(trainer.device)
        if epoch:  # epoch 0 warms up
            seen, seconds = seen + images, seconds + time.perf_counter() - start
    return seen / seconds


def data_only(trainer: Training, epochs: int) -> float:
    """images/s of the DataLoader alone, batches copied to the device."""
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        trainer.train_loader.sampler.set_epoch(epoch)
        for images, masks in trainer.train_loader:
            trainer.to_device(images, masks)
            seen += len(images)
    synchronize(trainer.device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", nargs="+", default=list(SYNTHETIC_GOALS), choices=list(SYNTHETIC_GOALS))
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="at most N train images (0: the whole train split)")
    parser.add_argument("--steps", type=int, default=30, help="timed synthetic steps")
    parser.add_argument("--epochs", type=int, default=5, help="timed pipeline epochs (after one warm-up)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="force torch.compile on or off (default: what petseg's compile = auto decides)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (--smoke: cuda if there is one, else cpu)")
    smoke = {"models": ["resnet34-unet"], "batch_size": 4, "image_size": 32, "limit": 4, "steps": 1, "epochs": 1,
             "device": "cuda" if torch.cuda.is_available() else "cpu"}
    args = parse_args(parser, smoke)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"no CUDA device for --device {args.device}: pass --device cpu to run the same code on the CPU")

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, batch {args.batch_size}, {args.image_size}px, "
          f"compile {'auto' if args.compile is None else args.compile}", flush=True)
    verdicts = Verdicts(smoke=args.smoke)
    for model in args.models:
        settings = settings_for(args, model)
        machine = prepare_machine(settings, device, Context())
        trainer = Training(settings, Path(), machine, load_data(settings, Path(args.data_dir)))  # writes no run
        decision = trainer.compile_model(start_epoch=0)  # as a new run of settings.train.epochs would
        print(f"{model:14s} compile {'on' if decision.enabled else 'off'}: {decision.reason}", flush=True)
        images_per_s, peak, warm_up = synthetic(trainer, args.batch_size, args.image_size, args.steps)
        full = pipeline(trainer, args.epochs)
        feed = data_only(trainer, args.epochs)
        goal = SYNTHETIC_GOALS[model]
        print(f"{model:14s} {trainer.precision.name}, {trainer.machine.workers} workers: synthetic {images_per_s:8.1f} images/s "
              f"(goal >= {goal:.0f} on an H100), peak GPU memory {peak:.2f} GiB; pipeline {full:8.1f} images/s "
              f"= {full / images_per_s:.0%} of synthetic (goal >= {PIPELINE_SHARE:.0%}); data side alone "
              f"{feed:8.1f} images/s; warm-up {warm_up:.1f} s", flush=True)
        verdicts.check(images_per_s >= goal, f"{model} synthetic {images_per_s:.0f} < {goal:.0f} images/s")
        limit = "the data side" if feed < images_per_s else "per-step overhead (launches, host syncs)"
        verdicts.check(full >= PIPELINE_SHARE * images_per_s,
                       f"{model} pipeline at {full / images_per_s:.0%} of synthetic; limited by {limit}")
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("all goals met" if not verdicts.missed else "missed: " + "; ".join(verdicts.missed), flush=True)
    sys.exit(verdicts.exit_code())


if __name__ == "__main__":
    main()
