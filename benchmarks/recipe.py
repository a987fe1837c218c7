"""Seed recipe vs default recipe, from scratch, in one invocation: the figures behind `--recipe default`.

For each model and recipe it trains a run with `petseg train` (same seed, same epochs, early stopping
off so that both recipes get the same number of epochs), then scores its best.pth on the test split
(`petseg evaluate`'s library call, at each image's own size) and prints, per run: best val Dice,
per-image test Dice, pooled test Dice and training wall time (the sum of the epochs' times), then each
model's gain. It prints the CPU and the machine's load beside the times, which are inflated when other
work shares the machine.

    python benchmarks/recipe.py --data-dir ../shared/data/oxford-pet-sample \
        --models resnet34-unet --epochs 30 --image-size 256
    python benchmarks/recipe.py --models unet --epochs 12 --image-size 256
    python benchmarks/recipe.py --smoke --data-dir DIR    # resnet34-unet, 1 epoch at 32 px on 4 images

Run directories go under --runs-dir (a fresh directory per invocation); nothing is deleted (--smoke: a
temporary directory, deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import SCRATCH, parse_args  # this directory is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_capability() -> str:
    """The CPU model, its cores and the instruction sets petseg's speed depends on."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return f"{model}; {os.cpu_count()} cores; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S UTC")


def start(model: str, recipe: str, args: argparse.Namespace, runs_dir: Path, threads: int | None) -> tuple[Path, subprocess.Popen]:
    """`petseg train` for one (model, recipe), started; with ``threads``, torch uses that many."""
    name = f"{model}-{recipe}"
    command = [
        sys.executable, "-m", "petseg_cli", "train", "--recipe", recipe, "--model", model,
        "--epochs", str(args.epochs), "--patience", str(args.epochs), "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--data-dir", str(args.data_dir),
        "--runs-dir", str(runs_dir), "--name", name, *(["--limit", str(args.limit)] if args.limit else []), *args.train_args,
    ]
    print(f"[{now()}] {' '.join(command[1:])}   ({load()})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    log = open(runs_dir / f"{name}.log", "w") if args.parallel else None  # noqa: SIM115 (closed with the process)
    stdout = subprocess.DEVNULL if args.quiet else log
    return runs_dir / name, subprocess.Popen(command, env=env, stdout=stdout, stderr=log)


def finish(process: subprocess.Popen) -> None:
    if process.wait() != 0:
        raise SystemExit(f"training failed (exit code {process.returncode}): {' '.join(process.args[1:])}")


def score(run_dir: Path) -> dict:
    from petseg_cli.commands.evaluate import EvaluateOptions, evaluate

    [evaluation] = evaluate([run_dir], EvaluateOptions(split="test"))
    history = json.loads((run_dir / "history.json").read_text())
    record = evaluation.record
    return {
        "best_val_dice": history["summary"]["best_val_dice"],
        "best_epoch": history["summary"]["best_epoch"],
        "test_dice": record["dice"],
        "test_pooled_dice": record["pooled_dice"],
        "test_images": record["images"],
        "train_seconds": history["summary"]["total_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "oxford-pet-sample")
    parser.add_argument("--models", default="resnet34-unet,unet", help="Comma-separated models, trained in this order.")
    parser.add_argument("--recipes", default="seed,default", help="Comma-separated recipes; the first is the baseline.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--unet-epochs", type=int, default=None, help="Epochs for unet (default: --epochs).")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="Train on at most N train images (petseg train --limit); 0: all.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Default: benchmarks/runs-recipe-<time>.")
    parser.add_argument("--quiet", action="store_true", help="Do not show the training output.")
    parser.add_argument(
        "--parallel", action="store_true",
        help="Train every run at once (the cores shared out; each run's output in <runs-dir>/<run>.log): on a "
        "machine shared with other work, every run then sees the same load; the times are not comparable "
        "with sequential ones.",
    )
    parser.add_argument("train_args", nargs="*", help="Extra `petseg train` flags for every run (after --).")
    smoke = {"models": "resnet34-unet", "epochs": 1, "image_size": 32, "batch_size": 4, "limit": 4, "runs_dir": SCRATCH}
    args = parse_args(parser, smoke)
    runs_dir = args.runs_dir or REPO / "benchmarks" / f"runs-recipe-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    recipes = args.recipes.split(",")

    import torch

    print(f"CPU: {cpu_capability()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {load()}")
    print(f"data {args.data_dir}, {args.image_size} px, batch {args.batch_size}, seed {args.seed}, early stopping off")
    runs_dir.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    plan = [(model, recipe) for model in models for recipe in recipes]
    threads = max(1, (os.cpu_count() or 1) // len(plan)) if args.parallel else None
    results: dict[tuple[str, str], dict] = {}

    def record(model: str, recipe: str, run: Path, epochs: int, started: float) -> None:
        results[model, recipe] = r = {**score(run), "epochs": epochs, "run": str(run)}
        print(
            f"[{now()}] RESULT {model} recipe={recipe} epochs={epochs}: best val Dice {r['best_val_dice']:.4f} "
            f"(epoch {r['best_epoch']}), test Dice {r['test_dice']:.4f} per image / {r['test_pooled_dice']:.4f} "
            f"pooled on {r['test_images']} images, training {r['train_seconds']:.0f} s "
            f"(process {time.perf_counter() - started:.0f} s; {load()})",
            flush=True,
        )

    def epochs_of(model: str) -> int:
        return args.unet_epochs if model == "unet" and args.unet_epochs else args.epochs

    started = time.perf_counter()
    if args.parallel:
        print(f"training {len(plan)} runs at once, {threads} thread(s) each")
        running = [
            (model, recipe, *start(model, recipe, argparse.Namespace(**{**vars(args), "epochs": epochs_of(model)}), runs_dir, threads))
            for model, recipe in plan
        ]
        for model, recipe, run, process in running:
            finish(process)
        for model, recipe, run, _ in running:
            record(model, recipe, run, epochs_of(model), started)
    else:
        for model, recipe in plan:
            started = time.perf_counter()
            run, process = start(model, recipe, argparse.Namespace(**{**vars(args), "epochs": epochs_of(model)}), runs_dir, None)
            finish(process)
            record(model, recipe, run, epochs_of(model), started)
    for model in models:
        base = results[model, recipes[0]]
        for recipe in recipes[1:]:
            r = results[model, recipe]
            print(
                f"GAIN {model} {recipe} vs {recipes[0]}: test Dice {r['test_dice'] - base['test_dice']:+.4f} per image, "
                f"{r['test_pooled_dice'] - base['test_pooled_dice']:+.4f} pooled, best val Dice "
                f"{r['best_val_dice'] - base['best_val_dice']:+.4f}; training time x{r['train_seconds'] / base['train_seconds']:.2f}",
                flush=True,
            )
    print(json.dumps({f"{m}/{r}": v for (m, r), v in results.items()}, indent=1))
    print(f"done {now()}; {load()}")


if __name__ == "__main__":
    main()
