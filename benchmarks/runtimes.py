"""The runtimes of an exported model side by side in one run: torch (the run's precision), onnxruntime
fp32 and int8, OpenVINO fp32, bf16 and int8, and `--runtime auto` on each file; exits 1 when a target
is missed.

    python benchmarks/runtimes.py                                   # resnet34-unet at 256 px, the sample's test images
    python benchmarks/runtimes.py --run runs/my-run --test-images 40 --dir-repeats 1
    python benchmarks/runtimes.py --smoke --data-dir DIR --runs-dir RUNS   # 64 px, 4 photos, the fp32 file only

The run (--run, else RUNS_DIR/resnet34-unet, trained and exported as benchmarks/infer_speed.py does when
absent) gives RUN/model.onnx and RUN/model.int8.onnx. For each path:
- the model alone: the test photos decoded and resized beforehand, batches of --batch-size, in
  alternated rounds (each path one batch per round after an untimed one), images/s of the median round;
- the whole `petseg infer DIR` (start-up, decoding, the model, resizing back, writing PNGs), one call per
  path in rotation, median of --dir-repeats: images/s, and as a share of the model alone;
- its masks against onnxruntime fp32's: share of pixels equal, and the mean per-image test Dice.
Targets: on a CPU with AMX, auto on the fp32 file >= 3x onnxruntime fp32 (whole command) and auto on the
int8 file >= 2x onnxruntime int8; on any CPU, auto never more than 5% slower than onnxruntime on the same
file, masks agreeing on >= 99.5% of pixels and test Dice within 0.003; the fastest path's whole command
>= 85% of its model alone. The load is printed beside every figure: on a shared machine only ratios taken
together mean something.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import SCRATCH, Verdicts, load, parse_args, say  # noqa: E402
from infer_speed import DEFAULT_DATA, REPO, agreement, cpu_description, ensure_run, mean_test_dice, petseg, rotation, test_images

sys.path.insert(0, str(REPO))

AMX_TARGETS = {"fp32": 3.0, "int8": 2.0}  # auto / onnxruntime, whole command, on the same file (AMX only)
NOT_SLOWER = 0.95  # auto / onnxruntime, whole command, anywhere
PIPELINE_TARGET = 0.85  # whole command images/s / model alone images/s, the fastest path
AGREEMENT_TARGET = 0.995
DICE_TOLERANCE = 0.003


def paths_of(run: Path, with_openvino: bool) -> dict[str, list[str]]:
    """Each path's `petseg infer` arguments (and how the model-alone measurement opens it)."""
    fp32, int8 = str(run / "model.onnx"), str(run / "model.int8.onnx")
    paths = {
        "torch": ["--run", str(run)],
        "ort-fp32": ["--model-file", fp32, "--runtime", "onnxruntime"],
        "ort-int8": ["--model-file", int8, "--runtime", "onnxruntime"],
    }
    if with_openvino:
        paths.update({
            "ov-fp32": ["--model-file", fp32, "--runtime", "openvino", "--precision", "fp32"],
            "ov-bf16": ["--model-file", fp32, "--runtime", "openvino", "--precision", "bf16"],
            "ov-int8": ["--model-file", int8, "--runtime", "openvino"],
        })
    paths.update({"auto-fp32": ["--model-file", fp32, "--runtime", "auto"], "auto-int8": ["--model-file", int8, "--runtime", "auto"]})
    return paths


def open_path(arguments: list[str], threads: int | None):
    from petseg_cli.predict.predictor import open_predictor

    options = dict(zip(arguments[::2], arguments[1::2]))
    source = options.get("--model-file") or options["--run"]
    return open_predictor(
        Path(source), device="cpu", precision=options.get("--precision"), threads=threads,
        runtime=options.get("--runtime", "onnxruntime"),
    )


def model_alone(paths: dict[str, list[str]], folder: Path, names: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Images/s of each path's model alone on the photos, resized beforehand; alternated rounds."""
    from petseg_cli.data.images import read_rgb
    from petseg_cli.data.masks import model_batch

    predictors = {path: open_path(arguments, args.threads) for path, arguments in paths.items()}
    for path, predictor in predictors.items():
        if predictor.info.runtime_choice:
            say(f"  {path}: {predictor.info.runtime_choice}")
    size = next(iter(predictors.values())).image_size
    photos = [read_rgb(folder / f"{name}.jpg", exif_orientation=True) for name in names[: args.alone_images]]
    batches = [model_batch(photos[i : i + args.batch_size], size) for i in range(0, len(photos), args.batch_size)]
    for predictor in predictors.values():
        predictor.pet_probability(batches[0])  # untimed: builds the kernels
    rounds: dict[str, list[float]] = {path: [] for path in predictors}
    for repeat in range(args.rounds):
        for path in rotation(list(predictors), repeat):
            started = time.perf_counter()
            for batch in batches:
                predictors[path].pet_probability(batch)
            rounds[path].append(len(photos) / (time.perf_counter() - started))
    return {path: statistics.median(r) for path, r in rounds.items()}


def whole_command(paths: dict[str, list[str]], folder: Path, names: list[str], out: Path, args: argparse.Namespace) -> dict[str, float]:
    rate: dict[str, list[float]] = {path: [] for path in paths}
    for repeat in range(args.dir_repeats):
        for path in rotation(list(paths), repeat):
            before = load()
            extra = ["--threads", str(args.threads)] if args.threads else []
            seconds = petseg("infer", str(folder), "-o", str(out / path), "--overwrite", "-b", str(args.batch_size), *extra, *paths[path])
            rate[path].append(len(names) / seconds)
            say(f"  {path:9s} {seconds:7.1f} s = {len(names) / seconds:6.2f} images/s   ({before})")
    return {path: statistics.median(r) for path, r in rate.items()}


def report(alone: dict, whole: dict, out: Path, names: list[str], args: argparse.Namespace, verdicts: Verdicts, amx: bool) -> None:
    say(f"\n| path | model alone (images/s) | whole `infer DIR` (images/s) | whole / alone | x ort fp32 (whole) | masks = ort fp32 | test Dice |")
    say("|---|---|---|---|---|---|---|")
    for path in whole:
        same, _, _, _ = agreement(out / "ort-fp32", out / path, names, args.data_dir)
        mean, _ = mean_test_dice(out / path, names, args.data_dir)
        say(f"| {path} | {alone[path]:.2f} | {whole[path]:.2f} | {whole[path] / alone[path]:.0%} | "
            f"{whole[path] / whole['ort-fp32']:.2f}x | {same:.3%} | {mean:.4f} |")
        if path.startswith("auto"):
            reference = "ort-" + path.split("-")[1]
            dice_gap = abs(mean - mean_test_dice(out / reference, names, args.data_dir)[0])
            same_ref = agreement(out / reference, out / path, names, args.data_dir)[0]
            ratio = whole[path] / whole[reference]
            verdicts.check(ratio >= NOT_SLOWER, f"{path}: {ratio:.2f}x {reference} < {NOT_SLOWER}")
            verdicts.check(same_ref >= AGREEMENT_TARGET, f"{path}: masks agree with {reference} on {same_ref:.3%}")
            verdicts.check(dice_gap <= DICE_TOLERANCE, f"{path}: test Dice {dice_gap:.4f} from {reference}'s")
            if amx:
                target = AMX_TARGETS[path.split("-")[1]]
                verdicts.check(ratio >= target, f"{path}: {ratio:.2f}x {reference} < {target}x (AMX)")
    fastest = max(whole, key=whole.get)
    share = whole[fastest] / alone[fastest]
    say(f"\nfastest whole command: {fastest}, {share:.0%} of its model alone (target >= {PIPELINE_TARGET:.0%}): "
        + verdicts.check(share >= PIPELINE_TARGET, f"{fastest}: whole command {share:.0%} of the model alone"))


def serving(run: Path, folder: Path, names: list[str], args: argparse.Namespace, verdicts: Verdicts) -> None:
    """`petseg serve model.onnx` batched, on onnxruntime and with --runtime auto, from concurrent clients
    (benchmarks/serve_load.py's phases): auto's images/s against onnxruntime fp32's."""
    from serve_load import serve_phase

    bodies = [(folder / f"{name}.jpg").read_bytes() for name in names]
    args.requests, args.phase_limit_s = args.serve_requests, 900.0
    say(f"\n`petseg serve model.onnx`, {args.requests} requests from {args.clients} clients, batched ({load()})")
    rates = {rt: serve_phase(f"serve --runtime {rt}", run / "model.onnx", ["--runtime", rt], bodies, args)["throughput"] for rt in ("onnxruntime", "auto")}
    ratio = rates["auto"] / rates["onnxruntime"]
    say(f"  auto / onnxruntime fp32: {ratio:.2f}x (target on AMX >= 2.5x; anywhere >= {NOT_SLOWER}x): "
        + verdicts.check(ratio >= NOT_SLOWER, f"serve auto {ratio:.2f}x onnxruntime"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (or release)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "infer-speed", help="where an absent run is trained")
    parser.add_argument("--run", type=Path, default=None, help="the run to measure (default: RUNS_DIR/resnet34-unet)")
    parser.add_argument("--test-images", type=int, default=None, help="only the first N test images (default: all)")
    parser.add_argument("--alone-images", type=int, default=32, help="photos timed through the model alone")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch, everywhere")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the model alone")
    parser.add_argument("--dir-repeats", type=int, default=1, help="`infer DIR` calls per path")
    parser.add_argument("--threads", type=int, default=None, help="threads for every path (default: the machine's)")
    parser.add_argument("--skip", nargs="*", default=[], help="paths to leave out, e.g. torch (a run trained at another size than its export)")
    parser.add_argument("--serve-requests", type=int, default=0, help="also serve the fp32 file: requests per runtime (0: no)")
    parser.add_argument("--serve-only", action="store_true", help="with --serve-requests: only the serving comparison")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the served model")
    parser.add_argument("--train-images", type=int, default=40, help="trainval images to train an absent run on")
    parser.add_argument("--image-size", type=int, default=256, help="image size to train an absent run at")
    smoke = {"test_images": 4, "alone_images": 4, "batch_size": 2, "rounds": 1, "train_images": 8, "image_size": 64,
             "runs_dir": SCRATCH, "skip": ["torch", "ort-int8", "ov-int8", "auto-int8"]}
    args = parse_args(parser, smoke)
    args.runs_dir = args.runs_dir.resolve()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    args.int8 = not {"ort-int8", "ov-int8", "auto-int8"} <= set(args.skip)  # export --int8 only when measured
    run = args.run.resolve() if args.run else ensure_run("resnet34-unet", args)
    from petseg_cli.machine.precision import read_cpu_flags
    from petseg_cli.predict.runtime_probe import openvino_installed

    amx = "amx_bf16" in read_cpu_flags()
    say(cpu_description() + f"; AMX {'yes' if amx else 'no'}; OpenVINO {'installed' if openvino_installed() else 'NOT installed'}")
    folder, names = test_images(args.data_dir, args.runs_dir, args.test_images)
    out = args.runs_dir / "runtimes-out"
    paths = {path: arguments for path, arguments in paths_of(run, openvino_installed()).items() if path not in args.skip}
    verdicts = Verdicts(smoke=args.smoke)
    if args.serve_requests and args.serve_only:
        serving(run, folder, names, args, verdicts)
        sys.exit(verdicts.exit_code())
    say(f"\nthe model alone: {min(args.alone_images, len(names))} photos in batches of {args.batch_size}, median of {args.rounds} alternated rounds ({load()})")
    alone = model_alone(paths, folder, names, args)
    say("  " + ", ".join(f"{path} {rate:.2f}" for path, rate in alone.items()) + " images/s")
    say(f"\n`petseg infer DIR` over {len(names)} test images, one call per path (in rotation, {args.dir_repeats}x)")
    whole = whole_command(paths, folder, names, out, args)
    report(alone, whole, out, names, args, verdicts, amx)
    if args.serve_requests:
        serving(run, folder, names, args, verdicts)
    say("\nall targets met" if not verdicts.missed else "\nMISSED: " + "; ".join(verdicts.missed))
    sys.exit(verdicts.exit_code())


if __name__ == "__main__":
    main()
