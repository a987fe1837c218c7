"""Dice per minute: the best mask a given amount of training time buys, on the CPU at hand.

Four arms, each trained with every seed (default two), then scored on the test split (per-image Dice at
each image's original size, best.pth: `petseg evaluate`'s library call):

    seed      --recipe seed at --image-size for --epochs (early stopping off): its mean wall time is T
    default   --recipe default, same size and epochs
    time T    --recipe default --time T with progressive resizing (--schedule, default SIZE/2:SIZE)
    time T/2  the same with --time T/2

The arms run one after another (T must be known first); with --parallel the seeds of an arm train
together, one thread each, so that they share the machine fairly. It prints a table (per run, then
each arm's mean), checks the issue's targets, and draws every run's val Dice (lines) and test Dice
(markers, at the run's end) against wall-clock time in one plot (<runs-dir>/time_to_dice.png).
Wall-clock time is the sum of the epochs' times (training, validation, BatchNorm passes), and for a
budgeted run the budget used as history.json records it (saves included).

    python benchmarks/time_to_dice.py --parallel                       # the full benchmark: hours on 2 cores
    python benchmarks/time_to_dice.py --image-size 64 --epochs 2 --limit 16 --parallel   # a quick try
    python benchmarks/time_to_dice.py --smoke --data-dir DIR    # one seed, 1 epoch at 32 px on 4 images

Run directories go under --runs-dir (a fresh directory per invocation); nothing is deleted (--smoke: a
temporary directory, deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from statistics import mean

from common import SCRATCH, Verdicts, parse_args  # this directory is on sys.path when run as a script
from recipe import REPO, cpu_capability, finish, load, now

BUDGET_OVER = 0.05  # a --time run may end at most 5% over its budget (validation and the last save included)
TARGET_GAIN = 0.04  # --time T must beat seed's test Dice by this much; --time T/2 must reach it
ARM_NAMES = {"seed": "seed", "default": "default", "time T": "time", "time T/2": "halftime"}  # in run names


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "oxford-pet-sample")
    parser.add_argument("--models", default="resnet34-unet", help="Comma-separated models, each with all four arms.")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30, help="Epochs of the seed and default arms.")
    parser.add_argument("--schedule", default=None, help="The --time arms' size schedule (default: SIZE/2:SIZE).")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="Train on at most N train images (petseg train --limit); 0: all.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Default: benchmarks/runs-time-to-dice-<time>.")
    parser.add_argument("--parallel", action="store_true", help="Train an arm's seeds at once, one thread each.")
    parser.add_argument("train_args", nargs="*", help="Extra `petseg train` flags for every run (after --).")
    smoke = {"image_size": 32, "epochs": 1, "seeds": "0", "batch_size": 4, "limit": 4, "runs_dir": SCRATCH}
    return parse_args(parser, smoke)


def default_schedule(size: int) -> str:
    start = max(32, size // 2 // 32 * 32)
    return f"{start}:{size}" if start < size else str(size)


def arm_flags(arm: str, args: argparse.Namespace, budget: float) -> list[str]:
    """The `petseg train` flags of an arm (``budget``: T, in seconds, for the --time arms)."""
    fixed = ["--epochs", str(args.epochs), "--patience", str(args.epochs), "--image-size", str(args.image_size)]
    if arm == "seed":
        return ["--recipe", "seed", *fixed]
    if arm == "default":
        return ["--recipe", "default", *fixed]
    seconds = budget if arm == "time T" else budget / 2
    schedule = args.schedule or default_schedule(args.image_size)
    # --epochs is then a maximum, far beyond what fits.
    return ["--recipe", "default", "--time", f"{max(seconds, 1.0):.0f}s", "--epochs", str(args.epochs * 20), "--image-size", schedule]


def start(name: str, flags: list[str], seed: int, args: argparse.Namespace, runs_dir: Path, threads: int | None) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "petseg_cli", "train", *flags, "--seed", str(seed), "--batch-size", str(args.batch_size),
        "--data-dir", str(args.data_dir), "--runs-dir", str(runs_dir), "--name", name,
        *(["--limit", str(args.limit)] if args.limit else []), *args.train_args,
    ]
    print(f"[{now()}] {' '.join(command[1:])}   ({load()})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    log = open(runs_dir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(wall-clock seconds, val Dice) after each epoch."""
    points, elapsed = [], 0.0
    for epoch in json.loads((run_dir / "history.json").read_text())["epochs"]:
        elapsed += epoch["seconds"]
        points.append((epoch.get("time_used", elapsed), epoch["val_dice"]))
    return points


def score(run_dir: Path) -> dict:
    from petseg_cli.commands.evaluate import EvaluateOptions, evaluate

    [evaluation] = evaluate([run_dir], EvaluateOptions(split="test"))
    summary = json.loads((run_dir / "history.json").read_text())["summary"]
    points = curve(run_dir)
    return {
        "run": str(run_dir), "epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"],
        "best_val_dice": summary["best_val_dice"], "test_dice": evaluation.record["dice"],
        "seconds": summary.get("time_used_seconds", points[-1][0]), "budget": summary.get("time_budget_seconds"),
        "curve": points,
    }


def train_arm(model: str, arm: str, args: argparse.Namespace, runs_dir: Path, budget: float) -> list[dict]:
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [f"{model}-{ARM_NAMES[arm]}-s{seed}" for seed in seeds]
    flags = [*arm_flags(arm, args, budget), "--model", model]
    threads = 1 if args.parallel else None
    if args.parallel:
        processes = [start(name, flags, seed, args, runs_dir, threads) for name, seed in zip(names, seeds)]
        for process in processes:
            finish(process)
    else:
        for name, seed in zip(names, seeds):
            finish(start(name, flags, seed, args, runs_dir, None))
    results = [{"model": model, "arm": arm, "seed": seed, **score(runs_dir / name)} for name, seed in zip(names, seeds)]
    for r in results:
        print(f"[{now()}] RESULT {model} {arm} seed {r['seed']}: {r['epochs']} epochs in {r['seconds']:.0f} s, best val Dice "
              f"{r['best_val_dice']:.4f} (epoch {r['best_epoch']}), test Dice {r['test_dice']:.4f} ({load()})", flush=True)
    return results


def table(results: list[dict], verdicts: Verdicts) -> list[str]:
    lines = [f"{'model':<14} {'arm':<9} {'seed':>4} {'epochs':>6} {'wall s':>8} {'budget s':>8} {'val Dice':>8} {'test Dice':>9}"]
    for r in results:
        budget = f"{r['budget']:.0f}" if r["budget"] else "-"
        lines.append(f"{r['model']:<14} {r['arm']:<9} {r['seed']:>4} {r['epochs']:>6} {r['seconds']:>8.0f} {budget:>8} "
                     f"{r['best_val_dice']:>8.4f} {r['test_dice']:>9.4f}")
    lines.append("means of the seeds:")
    for model in dict.fromkeys(r["model"] for r in results):
        arms = {arm: [r for r in results if r["model"] == model and r["arm"] == arm] for arm in ("seed", "default", "time T", "time T/2")}
        means = {arm: mean(r["test_dice"] for r in rs) for arm, rs in arms.items()}
        for arm, rs in arms.items():
            lines.append(f"{model:<14} {arm:<9} {'mean':>4} {mean(r['epochs'] for r in rs):>6.1f} {mean(r['seconds'] for r in rs):>8.0f} "
                         f"{'':>8} {mean(r['best_val_dice'] for r in rs):>8.4f} {means[arm]:>9.4f}")
        gain = means["time T"] - means["seed"]
        lines.append(f"{model}: --time T beats seed by {gain:+.4f} test Dice (target +{TARGET_GAIN}): "
                     + verdicts.check(gain >= TARGET_GAIN, f"{model} --time T gain {gain:+.4f}"))
        lines.append(f"{model}: --time T/2 vs seed {means['time T/2'] - means['seed']:+.4f} (target >= 0): "
                     + verdicts.check(means["time T/2"] >= means["seed"], f"{model} --time T/2 below seed"))
        for r in arms["time T"] + arms["time T/2"]:
            over = r["seconds"] / r["budget"] - 1
            lines.append(f"{model} {r['arm']} seed {r['seed']}: {r['seconds']:.0f} s of {r['budget']:.0f} s ({over:+.1%}; at most "
                         f"+{BUDGET_OVER:.0%}): " + verdicts.check(over <= BUDGET_OVER, f"{r['run']} {over:+.1%} over its budget"))
    return lines


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"seed": "tab:gray", "default": "tab:blue", "time T": "tab:red", "time T/2": "tab:orange"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in results:
        xs, ys = zip(*[(seconds / 60, dice) for seconds, dice in r["curve"]])
        style = "-" if r["seed"] == results[0]["seed"] else "--"
        ax.plot(xs, ys, style, marker="o", markersize=3, color=colours[r["arm"]], alpha=0.8,
                label=f"{r['model']} {r['arm']} seed {r['seed']} (val)")
        ax.plot([xs[-1]], [r["test_dice"]], "*", color=colours[r["arm"]], markersize=12)
    ax.set_xlabel("wall-clock minutes (epochs' time; a --time run: its budget used)")
    ax.set_ylabel("Dice (lines: val per epoch; stars: test, best.pth, original size)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = arguments()
    runs_dir = args.runs_dir or REPO / "benchmarks" / f"runs-time-to-dice-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    import torch

    machine = f"CPU: {cpu_capability()}; torch {torch.__version__}"
    print(f"{machine}; {load()}")
    print(f"data {args.data_dir}{f' (--limit {args.limit})' if args.limit else ''}, {args.image_size} px, {args.epochs} epochs, "
          f"batch {args.batch_size}, seeds {args.seeds}, schedule {args.schedule or default_schedule(args.image_size)}, "
          f"{'seeds in parallel, one thread each' if args.parallel else f'one run at a time, {torch.get_num_threads()} threads'}")
    results, started = [], time.perf_counter()
    for model in args.models.split(","):
        results += train_arm(model, "seed", args, runs_dir, 0.0)
        budget = mean(r["seconds"] for r in results if r["model"] == model)  # T
        print(f"[{now()}] T = {budget:.0f} s ({model}, seed recipe, mean of the seeds)", flush=True)
        for arm in ("default", "time T", "time T/2"):
            results += train_arm(model, arm, args, runs_dir, budget)
    verdicts = Verdicts()
    lines = table(results, verdicts)
    print("\n".join(lines))
    figure = runs_dir / "time_to_dice.png"
    how = "an arm's seeds in parallel, one thread each" if args.parallel else "one run at a time"
    plot(results, figure, f"{args.image_size} px, {args.epochs} epochs, seeds {args.seeds}, {how}\n{machine}")
    (runs_dir / "time_to_dice.json").write_text(json.dumps(results, indent=1))
    print(f"plot {figure}; results {runs_dir / 'time_to_dice.json'}")
    print(f"done {now()} after {time.perf_counter() - started:.0f} s; {load()}; targets missed: {len(verdicts.missed)}")


if __name__ == "__main__":
    main()
