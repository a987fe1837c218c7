"""Recipe ablation: each arm (one change from today's default recipe) against the default, in paired waves.

A wave trains the baseline (today's default: `petseg train --time T --image-size 128:256`) and one arm with
the same seed at the same time, each a `petseg train` process with one thread, so that the pair shares the
machine alike even while other work loads it. Each arm is compared with its own wave's baseline: the delta
of val Dice per seed, its mean, and beside it the spread of the baselines over all waves (how far the same
recipe moves from wave to wave). An arm is a set of settings (written as a petseg.toml in the arm's own
directory and passed with --config), optionally another --image-size, and evaluate options; an arm that only
changes evaluation (flip TTA) trains nothing: it scores the baseline run of the first wave of its seed.

After each run, `petseg evaluate`'s library call scores best.pth on the val and test splits (at each photo's
own size, by breed too). It writes, under --out:

    waves/<arm>-s<seed>/{baseline,arm}/   the runs (and petseg.toml, train.log)
    results/<arm>-s<seed>.json            a finished wave: both runs' figures and the load during the wave
    ablation.md, ablation.json            the table (per arm: mean and per-seed val and test Dice, delta vs
                                          its wave's baseline, epochs, wall s; then val Dice per breed)
    ablation.png                          val Dice over minutes of every run (the frontier)

It is resumable: a wave whose results/<arm>-s<seed>.json exists is not run again, so it can be stopped and
started again with the same --out (an unfinished wave's directory is moved aside and the wave started afresh).
Only val Dice may choose an arm; test Dice is reported.

    python benchmarks/recipe_ablation.py --list
    python benchmarks/recipe_ablation.py --time 10m --seeds 0,1 --jobs 2 --out /work/ablation
    python benchmarks/recipe_ablation.py --time 10m --arms no_rotate90,ema_099 --out /work/ablation   # a part
    python benchmarks/recipe_ablation.py --smoke --data-dir DIR    # one arm, one seed, 32 px, 4 photos
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

from common import SCRATCH, parse_args, say  # this directory is on sys.path when run as a script
from recipe import REPO, cpu_capability, now
from time_to_dice import curve

BASELINE = "baseline"  # a run of today's default; the name of a wave of the baseline alone
LOAD_EVERY_S = 5.0  # how often the load average is sampled during a wave


@dataclass(frozen=True)
class Arm:
    """One change from today's default: settings ({section: {key: value}}, a petseg.toml), another
    --image-size, or (``tta``) an evaluation option only, with no training of its own."""

    what: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: str | None = None
    tta: bool = False
    tta_scales: str = ""  # evaluate --tta-scales (multi-scale TTA); "": one scale
    weights: str = "best"  # the weights evaluate scores: best.pth, or last.pth for a run whose val Dice chooses nothing

    @property
    def trains(self) -> bool:
        return not (self.tta or self.tta_scales)


DEFAULT_ARM = Arm("today's default")
# The default recipe's optimiser, Schedule-Free AdamW, has no schedule and averages its weights itself: an arm
# with an EMA or SAM (which wraps adam or adamw) trains with AdamW and the cosine schedule, v1's default.
ADAMW = {"optimizer": "adamw", "learning_rate": 3e-4, "scheduler": "cosine"}
ARMS: dict[str, Arm] = {
    "no_rotate90": Arm("without random_rotate90", {"augment": {"random_rotate90": 0.0}}),
    "no_grid": Arm("without grid_distortion", {"augment": {"grid_distortion": 0.0}}),
    "affine_rrc": Arm(
        "affine and random_resized_crop in place of random_rotate90 and grid_distortion (same probabilities)",
        {"augment": {"random_rotate90": 0.0, "grid_distortion": 0.0, "affine": 0.5, "random_resized_crop": 0.5}},
    ),
    "ema_099": Arm("EMA of the weights, decay 0.99 (with AdamW and cosine)", {"train": {**ADAMW, "ema": 0.99}}),
    "ema_0999": Arm("EMA of the weights, decay 0.999 (with AdamW and cosine)", {"train": {**ADAMW, "ema": 0.999}}),
    "loss_weights": Arm("loss 0.375 CE + 1.125 Dice (MosaicML's segmentation recipe)", {"train": {"ce_weight": 0.375, "dice_weight": 1.125}}),
    "label_smoothing": Arm("label smoothing 0.1 of the cross-entropy term", {"train": {"label_smoothing": 0.1}}),
    "ce_lovasz": Arm("loss cross-entropy + Lovász hinge (in place of soft Dice)", {"train": {"loss": "ce+lovasz"}}),
    "lovasz": Arm("loss Lovász hinge alone", {"train": {"loss": "lovasz"}}),
    "cutmix": Arm("CutMix 0.5: a box of another training photo pasted, image and mask", {"augment": {"cutmix": 0.5}}),
    "copy_paste": Arm("copy-paste 0.5: another training photo's pet pasted, image and mask", {"augment": {"copy_paste": 0.5}}),
    "schedulefree": Arm("Schedule-Free AdamW at 3e-4, no schedule after the warm-up",
                        {"train": {"optimizer": "schedulefree-adamw", "scheduler": "constant", "learning_rate": 3e-4}}),
    "schedulefree_lr1e-3": Arm("Schedule-Free AdamW at 1e-3, no schedule after the warm-up (recipe v2's default)",
                               {"train": {"optimizer": "schedulefree-adamw", "scheduler": "constant", "learning_rate": 1e-3}}),
    "sam": Arm("SAM every second step, rho 0.05 (with AdamW and cosine)", {"train": {**ADAMW, "sam_rho": 0.05, "sam_every": 2}}),
    "adamw_cosine": Arm("AdamW with a cosine schedule fitted to the budget: the default before recipe v2", {"train": ADAMW}),
    "refit": Arm("a refit on train + val, same --time; its last.pth scored (its val Dice is on photos it trained on: "
                 "compare test Dice only)", {"data": {"train_on_val": True}}, weights="last"),
    "size_320": Arm("a final size of 320 px (--image-size 128:320)", image_size="128:320"),
    "size_192": Arm("a final size of 192 px (--image-size 128:192): more epochs in the time, predicting at 192 px",
                    image_size="128:192"),
    "size_96": Arm("progressive resizing from 96 px (--image-size 96:256: 96, 192, 256 px)", image_size="96:256"),
    "tta_flip": Arm("flip TTA at evaluate, on the baseline's run (no training)", tta=True),
    "tta_scales": Arm("multi-scale TTA at evaluate: scales 0.75, 1, 1.25, each with its flip, on the baseline's run (no training)",
                      tta=True, tta_scales="0.75,1,1.25"),
}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "oxford-pet-sample")
    parser.add_argument("--arms", default=",".join(ARMS), help="Comma-separated arms (--list shows them).")
    parser.add_argument("--list", action="store_true", help="Print the arms and their settings, and exit.")
    parser.add_argument("--time", default="10m", help="Every run's `petseg train --time` budget (same wall clock for each).")
    parser.add_argument("--seeds", default="0,1", help="Comma-separated seeds; each arm gets one wave per seed.")
    parser.add_argument("--jobs", type=int, default=2, help="Training processes at once, one thread each: an even number (a wave is two).")
    parser.add_argument("--image-size", default="128:256", help="The baseline's --image-size (an arm may change it).")
    parser.add_argument("--model", default="resnet34-unet")
    parser.add_argument("--epochs", type=int, default=500, help="`petseg train --epochs`: the most; the --time budget decides.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="Train on at most N train images (petseg train --limit); 0: all.")
    parser.add_argument("--out", type=Path, default=None, help="Results and runs (default: benchmarks/ablation). Rerun with the same --out to resume.")
    parser.add_argument("train_args", nargs="*", help="Extra `petseg train` flags for every run (after --).")
    smoke = {"arms": "no_rotate90,tta_scales", "time": "1m", "train_args": ["--precision", "fp32"], "seeds": "0", "image_size": "32", "epochs": 1, "batch_size": 2,
             "limit": 4, "out": SCRATCH}
    return parse_args(parser, smoke, argv)


def toml_text(table: dict[str, dict[str, Any]]) -> str:
    import tomli_w

    return "# an arm of benchmarks/recipe_ablation.py: its changes from today's default\n" + tomli_w.dumps(table)


def check_arms(names: list[str], out: Path) -> None:
    """Unknown arm names, and any arm whose settings petseg would refuse, stop the script before any training."""
    unknown = [name for name in names if name not in ARMS]
    if unknown:
        sys.exit(f"unknown arm(s) {', '.join(unknown)}; choose from: {', '.join(ARMS)}")
    from petseg_cli.base.errors import PetsegError
    from petseg_cli.config.settings import apply_table, recipe_settings
    from petseg_cli.train.validation import validate_settings

    for name in names:
        try:
            validate_settings(apply_table(recipe_settings("default", name), ARMS[name].settings, f"arm {name}"))
        except PetsegError as exc:
            sys.exit(f"arm {name}: {exc}")


def train_command(args: argparse.Namespace, arm: Arm, seed: int, run: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "petseg_cli", "train", "--config", str(config), "--model", args.model, "--time", args.time,
        "--epochs", str(args.epochs), "--image-size", arm.image_size or args.image_size, "--batch-size", str(args.batch_size),
        "--seed", str(seed), "--data-dir", str(args.data_dir.resolve()), "--runs-dir", str(run.parent), "--name", run.name,
        *(["--limit", str(args.limit)] if args.limit else []), *args.train_args,
    ]


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train(args: argparse.Namespace, arm: Arm, seed: int, run: Path) -> float:
    """One `petseg train` process with one thread, in the run's working directory holding its petseg.toml;
    the wall seconds it took."""
    work = run.parent / f"{run.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "petseg.toml"
    config.write_text(toml_text(arm.settings))
    env = {**os.environ, "PYTHONPATH": str(REPO), **ONE_THREAD}
    command = train_command(args, arm, seed, run, config)
    started = time.perf_counter()
    with open(work / "train.log", "w") as log:
        code = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"training failed (exit code {code}; see {work / 'train.log'}): {' '.join(command[1:])}")
    return time.perf_counter() - started


EVALUATE_LOCK = threading.Lock()  # one evaluation at a time in this process (it shares the machine with the training)


def scores(run: Path, tta: bool, weights: str, tta_scales: str = "") -> dict[str, Any]:
    """``weights`` (best.pth or last.pth) on val and test, at each photo's own size, by breed: `petseg
    evaluate`'s library call."""
    from petseg_cli.commands.evaluate import EvaluateOptions, evaluate

    found: dict[str, Any] = {}
    with EVALUATE_LOCK:
        for split in ("val", "test"):
            [evaluation] = evaluate([run], EvaluateOptions(split=split, weights=weights, tta=tta, by=("breed",), tta_scales=tta_scales or None))
            found[f"{split}_dice"] = evaluation.record["dice"]
            found[f"{split}_by_breed"] = {row["group"]: row["dice"] for row in evaluation.record["by"]["breed"]}
    return found


def figures(run: Path, arm: Arm, wall: float | None) -> dict[str, Any]:
    history = json.loads((run / "history.json").read_text())
    summary = history["summary"]
    return {
        "run": str(run), "epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"],
        "best_val_dice": summary["best_val_dice"], "wall_s": wall,
        "time_used_s": summary.get("time_used_seconds"), "curve": curve(run), "tta": arm.tta, "weights": arm.weights,
        "tta_scales": arm.tta_scales, **scores(run, arm.tta, arm.weights, arm.tta_scales),
    }


class LoadSampler:
    """os.getloadavg() every LOAD_EVERY_S seconds while a wave runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_EVERY_S):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {"mean": round(mean(self.samples), 2), "max": round(max(self.samples), 2), "samples": len(self.samples)}


def result_path(out: Path, name: str, seed: int) -> Path:
    return out / "results" / f"{name}-s{seed}.json"


def fresh_wave_dir(out: Path, name: str, seed: int) -> Path:
    """The wave's directory, empty: an unfinished one from an earlier invocation is moved aside, not deleted."""
    wave = out / "waves" / f"{name}-s{seed}"
    if wave.exists():
        aside = wave.with_name(f"{wave.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
        wave.rename(aside)
        say(f"[{now()}] {wave} was left unfinished: moved to {aside.name}, starting the wave again")
    wave.mkdir(parents=True)
    return wave


def run_wave(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """The baseline and arm ``name`` (BASELINE: the baseline alone), trained at once with ``seed``, then scored."""
    members = {BASELINE: DEFAULT_ARM} | ({"arm": ARMS[name]} if name != BASELINE else {})
    wave = fresh_wave_dir(args.out, name, seed)
    say(f"[{now()}] wave {name} seed {seed}: {len(members)} run(s) at once, one thread each, --time {args.time} "
        f"(load {os.getloadavg()[0]:.2f})")
    with LoadSampler() as sampler, ThreadPoolExecutor(len(members)) as pool:
        walls = dict(zip(members, pool.map(lambda m: train(args, members[m], seed, wave / m), members)))
    result = {
        "arm": name, "seed": seed, "load": sampler.summary(),
        "runs": {member: figures(wave / member, members[member], walls[member]) for member in members},
    }
    write_result(result_path(args.out, name, seed), result)
    say(f"[{now()}] wave {name} seed {seed} done: " + ", ".join(
        f"{m} val {r['val_dice']:.4f} test {r['test_dice']:.4f} ({r['epochs']} epochs)" for m, r in result["runs"].items()
    ) + f"; load mean {result['load']['mean']:.2f}, max {result['load']['max']:.2f}")
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(path)  # whole or absent: a wave counts as finished only once its figures are all written


def evaluation_only(args: argparse.Namespace, name: str, seed: int, baseline: dict[str, Any]) -> dict[str, Any]:
    """An arm that trains nothing: ``baseline`` (a trained wave's baseline run of ``seed``) scored again
    with the arm's evaluate options; compared with that same run."""
    path = result_path(args.out, name, seed)
    if path.exists():
        return json.loads(path.read_text())
    run = Path(baseline["run"])
    arm = {**figures(run, ARMS[name], None), "wall_s": baseline["wall_s"]}
    result = {"arm": name, "seed": seed, "load": None, "scored": str(run), "runs": {BASELINE: baseline, "arm": arm}}
    write_result(path, result)
    return result


def read_done(out: Path, seeds: list[int]) -> dict[tuple[str, int], dict[str, Any]]:
    return {
        (name, seed): json.loads(result_path(out, name, seed).read_text())
        for name in [*ARMS, BASELINE] for seed in seeds if result_path(out, name, seed).exists()
    }


def run_all(args: argparse.Namespace, names: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Every wave not finished yet (--jobs / 2 waves at once), then the evaluation-only arms, each on the
    baseline of its seed's first trained wave (in the order of ARMS; a wave of the baseline alone when none)."""
    done = read_done(args.out, seeds)
    finished = [f"{n}-s{s}" for n in names for s in seeds if (n, s) in done]
    if finished:
        say(f"finished already (in {args.out / 'results'}, not run again): {', '.join(finished)}")
    todo = [(n, s) for s in seeds for n in names if ARMS[n].trains and (n, s) not in done]
    trained_by_seed = {s for (n, s) in [*done, *todo] if n == BASELINE or ARMS[n].trains}
    needs = {s for n in names if not ARMS[n].trains for s in seeds if (n, s) not in done}
    todo += [(BASELINE, s) for s in sorted(needs - trained_by_seed)]
    say(f"{len(todo)} wave(s) to run, {min(max(args.jobs // 2, 1), max(len(todo), 1))} at once "
        f"({2 * max(args.jobs // 2, 1)} training processes at most, one thread each)")
    with ThreadPoolExecutor(max(args.jobs // 2, 1)) as pool:
        for job, result in zip(todo, pool.map(lambda job: run_wave(args, *job), todo)):
            done[job] = result
    order = [n for n in ARMS if ARMS[n].trains] + [BASELINE]
    for name in names:
        for seed in seeds if not ARMS[name].trains else ():
            first = next(n for n in order if (n, seed) in done)
            done[name, seed] = evaluation_only(args, name, seed, done[first, seed]["runs"][BASELINE])
    return [done[n, s] for n in names for s in seeds]


def per_seed(values: list[float], digits: int = 4, sign: bool = False) -> str:
    return " / ".join(f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}" for v in values)


def arm_row(name: str, waves: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm's figures over its seeds, each delta against the baseline of the arm's own wave."""
    arms, bases = [w["runs"]["arm"] for w in waves], [w["runs"][BASELINE] for w in waves]
    delta = lambda key: [a[key] - b[key] for a, b in zip(arms, bases)]  # noqa: E731
    loads = [w["load"]["mean"] for w in waves if w["load"]]
    return {
        "arm": name, "what": ARMS[name].what, "seeds": [w["seed"] for w in waves],
        "val_dice": [a["val_dice"] for a in arms], "test_dice": [a["test_dice"] for a in arms],
        "best_val_dice": [a["best_val_dice"] for a in arms],
        "delta_val": delta("val_dice"), "delta_test": delta("test_dice"), "delta_best_val": delta("best_val_dice"),
        "epochs": [a["epochs"] for a in arms], "wall_s": [a["wall_s"] for a in arms],
        "load": round(mean(loads), 2) if loads else None,
        "delta_val_by_breed": {
            breed: mean(a["val_by_breed"][breed] - b["val_by_breed"][breed] for a, b in zip(arms, bases))
            for breed in sorted(bases[0]["val_by_breed"])
        },
    }


def baseline_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every baseline run once (an evaluation-only arm shares its wave's)."""
    return list({w["runs"][BASELINE]["run"]: w["runs"][BASELINE] for w in results}.values())


def markdown(rows: list[dict[str, Any]], bases: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| arm | val Dice, mean (per seed) | Δ val vs its wave's baseline, mean (per seed) | Δ best val (history), mean "
             "| test Dice, mean (per seed) | Δ test, mean | epochs | wall s | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        load = f"{r['load']:.2f}" if r["load"] is not None else "-"
        lines.append(
            f"| {r['arm']} | {mean(r['val_dice']):.4f} ({per_seed(r['val_dice'])}) | {mean(r['delta_val']):+.4f} "
            f"({per_seed(r['delta_val'], sign=True)}) | {mean(r['delta_best_val']):+.4f} | {mean(r['test_dice']):.4f} "
            f"({per_seed(r['test_dice'])}) | {mean(r['delta_test']):+.4f} | {mean(r['epochs']):.1f} | {mean(r['wall_s']):.0f} | {load} |"
        )
    vals = [b["val_dice"] for b in bases]
    lines += ["", f"Baselines (today's default), {len(bases)} run(s) over all waves: val Dice mean {mean(vals):.4f}, "
              f"spread (population sd) {pstdev(vals):.4f}, range {min(vals):.4f} to {max(vals):.4f}; test Dice mean "
              f"{mean(b['test_dice'] for b in bases):.4f}, sd {pstdev([b['test_dice'] for b in bases]):.4f}."]
    breeds = sorted(bases[0]["val_by_breed"])
    lines += ["", "Val Dice by breed: the baselines' mean and sd over all waves, then each arm's mean Δ vs its wave's baseline.", "",
              "| | " + " | ".join(breeds) + " |", "| --- |" + " --- |" * len(breeds),
              "| baseline mean | " + " | ".join(f"{mean(b['val_by_breed'][x] for b in bases):.4f}" for x in breeds) + " |",
              "| baseline sd | " + " | ".join(f"{pstdev([b['val_by_breed'][x] for b in bases]):.4f}" for x in breeds) + " |"]
    lines += [f"| {r['arm']} | " + " | ".join(f"{r['delta_val_by_breed'][x]:+.4f}" for x in breeds) + " |" for r in rows]
    lines += ["", "Arms: " + "; ".join(f"{r['arm']}: {r['what']}" for r in rows) + "."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Every trained run's val Dice after each epoch against the minutes it had used (baselines grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colours = plt.get_cmap("tab10")
    drawn: set[str] = set()
    for index, wave in enumerate(results):
        for member, run in wave["runs"].items():
            if run["run"] in drawn or run["tta"] or run.get("tta_scales"):
                continue
            drawn.add(run["run"])
            xs, ys = zip(*[(seconds / 60, dice) for seconds, dice in run["curve"]])
            label = f"{wave['arm'] if member == 'arm' else 'baseline'} s{wave['seed']}"
            colour = "tab:gray" if member == BASELINE else colours(list(ARMS).index(wave["arm"]) % 10)
            ax.plot(xs, ys, "-" if member == "arm" else ":", marker="o", markersize=2, color=colour, alpha=0.8, label=label)
    ax.set_xlabel("minutes of the --time budget used")
    ax.set_ylabel("val Dice after each epoch (training size)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def list_arms() -> None:
    say(f"baseline: today's default recipe, petseg train --time T --image-size 128:256 (--image-size: the baseline's)")
    for name, arm in ARMS.items():
        changes = [f"[{section}] {key} = {value}" for section, values in arm.settings.items() for key, value in values.items()]
        changes += [f"--image-size {arm.image_size}"] * bool(arm.image_size) + ["evaluate --tta (no training)"] * arm.tta
        changes += [f"evaluate --tta-scales {arm.tta_scales}"] * bool(arm.tta_scales)
        changes += [f"evaluate --weights {arm.weights}"] * (arm.weights != "best")
        say(f"{name:<20} {arm.what}: {', '.join(changes)}")


def main() -> None:
    args = arguments()
    if args.list:
        list_arms()
        return
    names = [n for n in args.arms.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs < 2 or args.jobs % 2:
        sys.exit(f"--jobs must be an even number, 2 or more (a wave is the baseline and an arm at once), got {args.jobs}")
    args.out = (args.out or REPO / "benchmarks" / "ablation").resolve()
    check_arms(names, args.out)
    import torch

    machine = f"CPU: {cpu_capability()}; torch {torch.__version__}"
    say(f"{machine}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"data {args.data_dir}{f' (--limit {args.limit})' if args.limit else ''}, {args.model}, --time {args.time}, baseline "
        f"--image-size {args.image_size}, batch {args.batch_size}, seeds {args.seeds}, arms {', '.join(names)}; {args.jobs} "
        f"training processes at once ({args.jobs // 2} arm(s) beside their baselines), one thread each; out {args.out}")
    started = time.perf_counter()
    torch.set_num_threads(1)  # the evaluations in this process take one core, as each training does
    results = run_all(args, names, seeds)
    rows = [arm_row(name, [w for w in results if w["arm"] == name]) for name in names]
    bases = baseline_runs(results)
    header = (f"Recipe ablation: {args.model}, --time {args.time}, baseline --image-size {args.image_size}, seeds {args.seeds}, "
              f"{args.jobs} runs at once (one thread each), data {args.data_dir}. {machine}. Val and test Dice: best.pth per "
              f"image at each photo's own size (petseg evaluate); best val (history): the best epoch's val Dice at the training size.")
    text = markdown(rows, bases, header)
    (args.out / "ablation.md").write_text(text)
    (args.out / "ablation.json").write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "machine": machine,
                                                        "arms": rows, "waves": results}, indent=1))
    plot(results, args.out / "ablation.png", f"val Dice over minutes, --time {args.time}, seeds {args.seeds}\n{machine}")
    say(text)
    say(f"table {args.out / 'ablation.md'}; figures {args.out / 'ablation.json'}; plot {args.out / 'ablation.png'}")
    say(f"done {now()} after {time.perf_counter() - started:.0f} s; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
