"""`petseg infer` with an exported ONNX model (fp32 and int8) against the torch path, side by side; exits 1 when a target is missed.

    python benchmarks/infer_speed.py                                  # both models, on ../shared/data/oxford-pet-sample
    python benchmarks/infer_speed.py --models resnet34-unet --repeats 1
    python benchmarks/infer_speed.py --no-int8                        # fp32 torch and ONNX only
    python benchmarks/infer_speed.py --smoke --data-dir DIR           # resnet34-unet at 64 px, 4 photos, once each

For each model (a run under --runs-dir, trained here when absent: one epoch at 256 px on the first
--train-images trainval images, since speed and agreement do not depend on accuracy; then exported):
- wall time of `petseg infer one.jpg -o mask.png` with `--model-file model.onnx` and with `--run RUN`
  (torch), measured alternately, median of --repeats: target ONNX <= 0.5x torch;
- images/s of one `petseg infer DIR` call over the sample's test images, alternately: target ONNX >= 1.5x
  torch for resnet34-unet;
- agreement of the two paths' masks over those images (>= 99.9% of pixels), and the largest difference
  of per-image test Dice against the trimaps (< 0.001).
With int8 (the default; `petseg export --int8` makes RUN/model.int8.onnx when absent), a third path runs in
the same rotation: target int8 >= 2x fp32 ONNX images/s for resnet34-unet, measured on the models alone (as
the issue did: 32 photos in batches of 8, alternated; the whole command's ratio is printed beside it), its masks agree with the fp32
ONNX masks on >= 99% of pixels, the test Dice (mean per image, of the masks infer writes, against the
trimaps) within 0.005 of fp32 ONNX's, the file <= 0.3x the fp32 file. The CPU line says whether it has VNNI
(avx512_vnni / avx_vnni), the int8 dot product: without it int8 gains less.
The machine's load is printed beside every measurement: on a shared machine only the ratios mean something.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from common import SCRATCH, Verdicts, load, parse_args, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pet-sample"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

ONE_IMAGE_TARGET = 0.5  # ONNX wall time / torch wall time, one image
THROUGHPUT_TARGETS = {"resnet34-unet": 1.5}  # ONNX images/s / torch images/s, the test directory
INT8_THROUGHPUT_TARGETS = {"resnet34-unet": 2.0}  # int8 images/s / fp32 ONNX images/s
INT8_AGREEMENT_TARGET = 0.99
INT8_DICE_TOLERANCE = 0.005
INT8_SIZE_TARGET = 0.3  # int8 file bytes / fp32 file bytes
AGREEMENT_TARGET = 0.999
DICE_TOLERANCE = 0.001
TRAIN_TIMEOUT_S = 3600
CALL_TIMEOUT_S = 3600


def petseg(*args: str, timeout: float = CALL_TIMEOUT_S) -> float:
    """Run the real CLI; its wall time in seconds. A failure stops the benchmark with its stderr."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "petseg_cli", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"petseg {' '.join(args)} failed:\n{result.stderr}")
    return seconds


def cpu_description() -> str:
    import onnxruntime
    import torch

    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    vnni = "yes" if flags & {"avx512_vnni", "avx_vnni"} else "no (int8 gains less without it)"
    from petseg_cli.machine.devices import usable_cores

    return (
        f"CPU: {model}; {usable_cores()} usable cores; flags {' '.join(shown) or 'none of avx2/avx512'}; VNNI {vnni}; "
        f"torch {torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}); "
        f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    )


# -- the runs and the images ------------------------------------------------------------------------

def training_subset(data_dir: Path, work: Path, count: int) -> Path:
    """A dataset directory whose trainval list is the first ``count`` lines of the sample's (links, no copies)."""
    subset = work / f"train-subset-{count}"
    if subset.is_dir():
        return subset
    building = work / f".{subset.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    (building / "annotations").mkdir(parents=True)
    (building / "images").symlink_to((data_dir / "images").resolve())
    (building / "annotations" / "trimaps").symlink_to((data_dir / "annotations" / "trimaps").resolve())
    lines = [l for l in (data_dir / "annotations" / "trainval.txt").read_text().splitlines() if l and not l.startswith("#")]
    (building / "annotations" / "trainval.txt").write_text("\n".join(lines[:count]) + "\n")
    shutil.copy(data_dir / "annotations" / "test.txt", building / "annotations" / "test.txt")
    building.rename(subset)
    return subset


def ensure_run(model: str, args: argparse.Namespace) -> Path:
    """The run to measure; trained (bounded) when absent, exported when its model.onnx is missing."""
    run = args.runs_dir / model
    if not (run / "best.pth").is_file():
        shutil.rmtree(run, ignore_errors=True)
        subset = training_subset(args.data_dir, args.runs_dir, args.train_images)
        say(f"training {model}: 1 epoch at {args.image_size} px on {args.train_images} trainval images ({load()}) …")
        seconds = petseg(
            "train", "--model", model, "--epochs", "1", "--image-size", str(args.image_size), "--data-dir", str(subset),
            "--runs-dir", str(args.runs_dir), "--name", model, timeout=TRAIN_TIMEOUT_S,
        )
        say(f"  trained in {seconds:.0f} s")
    if not (run / "model.onnx").is_file():
        result = subprocess.run(
            [sys.executable, "-m", "petseg_cli", "export", str(run)], env=ENV, capture_output=True, text=True,
            timeout=CALL_TIMEOUT_S,
        )
        if result.returncode != 0:
            sys.exit(f"petseg export {run} failed:\n{result.stderr}")
        say("  " + "\n  ".join(result.stdout.strip().splitlines()))
    if args.int8 and not (run / "model.int8.onnx").is_file():
        say(f"  exporting {model} --int8 ({load()}) …")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "petseg_cli", "export", str(run), "--int8"], env=ENV, capture_output=True, text=True,
            timeout=CALL_TIMEOUT_S,
        )
        if result.returncode != 0:
            sys.exit(f"petseg export {run} --int8 failed:\n{result.stderr}")
        say("  " + "\n  ".join(result.stdout.strip().splitlines()) + f"\n  (export --int8 took {time.perf_counter() - started:.0f} s)")
    return run


def test_images(data_dir: Path, work: Path, limit: int | None) -> tuple[Path, list[str]]:
    """A directory of links to the sample's test images (every name of test.txt whose image exists)."""
    from petseg_cli.data.oxford_pet import split_samples

    samples = [s for s in split_samples(data_dir, "test") if s.image_path.is_file()][:limit]
    folder = work / f"test-images-{len(samples)}"
    if not folder.is_dir():
        building = work / f".{folder.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        for sample in samples:
            (building / sample.image_path.name).symlink_to(sample.image_path.resolve())
        building.rename(folder)
    return folder, [s.name for s in samples]


# -- agreement --------------------------------------------------------------------------------------

def dice(prediction, truth) -> float:
    inter, total = int((prediction & truth).sum()), int(prediction.sum() + truth.sum())
    return 2 * inter / total if total else 1.0


def agreement(torch_dir: Path, onnx_dir: Path, names: list[str], data_dir: Path) -> tuple[float, float, int, int]:
    """Share of pixels on which the masks agree, the largest |Dice difference|, and the images compared."""
    import numpy as np
    from PIL import Image

    from petseg_cli.data.images import DecodeError, read_label
    from petseg_cli.data.oxford_pet import BACKGROUND

    same = pixels = scored = 0
    worst = 0.0
    for name in names:
        with Image.open(torch_dir / f"{name}.png") as a, Image.open(onnx_dir / f"{name}.png") as b:
            by_torch, by_onnx = np.asarray(a) > 0, np.asarray(b) > 0
        same += int((by_torch == by_onnx).sum())
        pixels += by_torch.size
        try:
            truth = read_label(data_dir / "annotations" / "trimaps" / f"{name}.png") != BACKGROUND
        except DecodeError:
            continue
        if truth.shape == by_torch.shape:
            worst = max(worst, abs(dice(by_torch, truth) - dice(by_onnx, truth)))
            scored += 1
    return same / pixels, worst, len(names), scored


def probability_agreement(run: Path, onnx: Path, folder: Path, names: list[str]) -> str:
    """The 8-bit pet probabilities of both paths on ``names``, compared in this process: the masks of a
    barely trained run can be all pet or all background, where mask agreement alone says little."""
    import numpy as np

    from petseg_cli.data.images import read_rgb
    from petseg_cli.predict.predictor import open_predictor

    by_torch, by_onnx = open_predictor(run, device="cpu", precision="fp32"), open_predictor(onnx, device="cpu")
    same = pixels = worst = pet = 0
    spread = []
    for name in names:
        image = read_rgb(folder / f"{name}.jpg", exif_orientation=True)
        a, b = by_torch.pet_probabilities([image])[0].astype(int), by_onnx.pet_probabilities([image])[0].astype(int)
        same, pixels = same + int((a == b).sum()), pixels + a.size
        worst, pet = max(worst, int(np.abs(a - b).max())), pet + int((a >= 128).sum())
        spread.append(float(a.std()))
    return (
        f"8-bit probabilities identical on {same / pixels:.5%} of pixels, largest difference {worst}/255 "
        f"({len(names)} images; pet on {pet / pixels:.1%} of pixels; mean per-image std of the probability {np.mean(spread):.1f}/255)"
    )


# -- the measurements -------------------------------------------------------------------------------

def rotation(paths: list[str], repeat: int) -> list[str]:
    """The paths in the order of round ``repeat``: each goes first in turn (alternating, for two)."""
    k = repeat % len(paths)
    return paths[k:] + paths[:k]


def mean_test_dice(folder: Path, names: list[str], data_dir: Path) -> tuple[float, int]:
    """Mean per-image Dice of the masks in ``folder`` against the trimaps (pet and border are pet), and how many."""
    import numpy as np
    from PIL import Image

    from petseg_cli.data.images import DecodeError, read_label
    from petseg_cli.data.oxford_pet import BACKGROUND

    scores = []
    for name in names:
        with Image.open(folder / f"{name}.png") as mask:
            predicted = np.asarray(mask) > 0
        try:
            truth = read_label(data_dir / "annotations" / "trimaps" / f"{name}.png") != BACKGROUND
        except DecodeError:
            continue
        if truth.shape == predicted.shape:
            scores.append(dice(predicted, truth))
    return sum(scores) / len(scores), len(scores)


def one_image(model: str, paths: dict, folder: Path, names: list[str], out: Path, args: argparse.Namespace, verdicts: Verdicts) -> None:
    say(f"\n{model}: one image, `petseg infer {names[0]}.jpg -o mask.png` (median of {args.repeats}, in rotation)")
    one = {path: [] for path in paths}
    for repeat in range(args.repeats):
        for path in rotation(list(paths), repeat):
            before = load()
            seconds = petseg("infer", str(folder / f"{names[0]}.jpg"), "-o", str(out / f"one-{path}.png"), "--overwrite", *paths[path])
            one[path].append(seconds)
            say(f"  {path:5s} {seconds:6.2f} s   ({before})")
    median = {path: statistics.median(times) for path, times in one.items()}
    ratio = median["onnx"] / median["torch"]
    say("  median: " + ", ".join(f"{path} {m:.2f} s" for path, m in median.items()) + f"; onnx/torch = {ratio:.2f}x "
        f"(target <= {ONE_IMAGE_TARGET}x): "
        + verdicts.check(ratio <= ONE_IMAGE_TARGET, f"{model}: one image onnx/torch {ratio:.2f}x > {ONE_IMAGE_TARGET}x"))


def directory(model: str, paths: dict, folder: Path, names: list[str], out: Path, args: argparse.Namespace, verdicts: Verdicts) -> dict:
    say(f"{model}: `petseg infer DIR` over {len(names)} test images, one call each (in rotation, {args.dir_repeats}x)")
    rate = {path: [] for path in paths}
    for repeat in range(args.dir_repeats):
        for path in rotation(list(paths), repeat):
            before = load()
            seconds = petseg("infer", str(folder), "-o", str(out / path), "--overwrite", *paths[path])
            rate[path].append(len(names) / seconds)
            say(f"  {path:5s} {seconds:7.1f} s = {len(names) / seconds:6.2f} images/s   ({before})")
    median = {path: statistics.median(r) for path, r in rate.items()}
    speedup = median["onnx"] / median["torch"]
    target = THROUGHPUT_TARGETS.get(model)
    verdict = (
        f"(target >= {target}x): " + verdicts.check(speedup >= target, f"{model}: directory onnx/torch {speedup:.2f}x < {target}x")
        if target else "(no target for this model)"
    )
    say("  images/s: " + ", ".join(f"{path} {r:.2f}" for path, r in median.items()) + f"; onnx/torch = {speedup:.2f}x {verdict}")
    return median


def model_only(run: Path, folder: Path, names: list[str], threads: int | None, rounds: int = 3, images: int = 32,
               batch: int = 8) -> dict[str, float]:
    """images/s of the two ONNX models alone (normalised batches in, logits out; no decoding, resizing or
    PNG writing) on the first ``images`` test photos in batches of ``batch``, rounds alternated: the
    measure the issue's 2.3x was taken with."""
    from petseg_cli.data.images import read_rgb
    from petseg_cli.data.masks import model_batch
    from petseg_cli.predict.onnx_backend import OnnxPredictor, normalize

    models = {path: OnnxPredictor.load(run / file, threads=threads) for path, file in (("onnx", "model.onnx"), ("int8", "model.int8.onnx"))}
    photos = [read_rgb(next(folder.glob(f"{name}.*"))) for name in names[:images]]
    x = normalize(model_batch(photos, models["onnx"].image_size), models["onnx"].metadata)
    batches = [x[i : i + batch] for i in range(0, len(x), batch)]
    rates: dict[str, list[float]] = {path: [] for path in models}
    for m in models.values():
        m.logits(batches[0])  # warm-up
    for r in range(rounds):
        for path in (list(models) if r % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            for b in batches:
                models[path].logits(b)
            rates[path].append(len(x) / (time.perf_counter() - start))
    say(f"  model alone, {len(x)} photos in batches of {batch}, {rounds} rounds alternated: "
        + "; ".join(f"{p} " + " ".join(f"{v:.2f}" for v in values) + " images/s" for p, values in rates.items())
        + f"   ({load()})")
    return {path: statistics.median(values) for path, values in rates.items()}


def int8_figures(model: str, run: Path, rate: dict, folder: Path, names: list[str], out: Path, args: argparse.Namespace,
                 verdicts: Verdicts) -> None:
    """int8 against fp32 ONNX: throughput (the model alone, and the whole command), mask agreement, test
    Dice, file size."""
    target = INT8_THROUGHPUT_TARGETS.get(model)
    alone = model_only(run, folder, names, args.threads)
    speedup = alone["int8"] / alone["onnx"]
    verdict = (
        f"(target >= {target}x): " + verdicts.check(speedup >= target, f"{model}: int8/fp32 ONNX {speedup:.2f}x < {target}x")
        if target else "(no target for this model)"
    )
    say(f"  model alone: int8/fp32 ONNX images/s = {speedup:.2f}x (medians) {verdict}")
    say(f"  whole command (`petseg infer DIR`: decoding, resizing and PNG writing are not int8): int8/fp32 ONNX "
        f"images/s = {rate['int8'] / rate['onnx']:.2f}x")
    share, _, count, _ = agreement(out / "onnx", out / "int8", names, args.data_dir)
    say(f"  int8 masks agree with fp32 ONNX masks on {share:.4%} of the pixels of {count} images (target >= {INT8_AGREEMENT_TARGET:.0%}): "
        + verdicts.check(share >= INT8_AGREEMENT_TARGET, f"{model}: int8 agreement {share:.4%}"))
    scores = {path: mean_test_dice(out / path, names, args.data_dir) for path in ("torch", "onnx", "int8")}
    gap = scores["int8"][0] - scores["onnx"][0]
    say(f"  test Dice (mean per image of the masks infer wrote, {scores['onnx'][1]} trimaps): "
        + ", ".join(f"{path} {d:.4f}" for path, (d, _) in scores.items())
        + f"; int8 - fp32 ONNX = {gap:+.4f} (target within {INT8_DICE_TOLERANCE}): "
        + verdicts.check(abs(gap) <= INT8_DICE_TOLERANCE, f"{model}: int8 test Dice {gap:+.4f}"))
    fp32_bytes, int8_bytes = (run / "model.onnx").stat().st_size, (run / "model.int8.onnx").stat().st_size
    ratio = int8_bytes / fp32_bytes
    say(f"  files: fp32 {fp32_bytes / 1e6:.1f} MB, int8 {int8_bytes / 1e6:.1f} MB = {ratio:.2f}x (target <= {INT8_SIZE_TARGET}x): "
        + verdicts.check(ratio <= INT8_SIZE_TARGET, f"{model}: int8 file {ratio:.2f}x"))


def measure(model: str, args: argparse.Namespace, verdicts: Verdicts) -> None:
    run = ensure_run(model, args)
    onnx = run / "model.onnx"
    folder, names = test_images(args.data_dir, args.runs_dir, args.test_images)
    out = args.runs_dir / "out" / model
    out.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    # fp32 on both: a run trained in bf16 would otherwise predict in bf16 (the precision it recorded).
    paths = {"torch": ["--run", str(run), "--precision", "fp32", *threads], "onnx": ["--model-file", str(onnx), *threads]}
    if args.int8:
        paths["int8"] = ["--model-file", str(run / "model.int8.onnx"), *threads]
    say(f"\n{model}: " + probability_agreement(run, onnx, folder, names[: args.probability_images]))
    if args.skip_timing:
        return
    one_image(model, paths, folder, names, out, args, verdicts)
    rate = directory(model, paths, folder, names, out, args, verdicts)
    share, worst, count, scored = agreement(out / "torch", out / "onnx", names, args.data_dir)
    say(f"  masks agree on {share:.5%} of the pixels of {count} images (target >= {AGREEMENT_TARGET:.1%}): "
        + verdicts.check(share >= AGREEMENT_TARGET, f"{model}: agreement {share:.5%}"))
    say(f"  largest per-image test Dice difference {worst:.6f} over {scored} images with a trimap (target < {DICE_TOLERANCE}): "
        + verdicts.check(worst < DICE_TOLERANCE, f"{model}: Dice difference {worst:.6f}"))
    if args.int8:
        int8_figures(model, run, rate, folder, names, out, args, verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (or release)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "infer-speed",
                        help="where the measured runs are (trained there when absent) and the outputs go")
    parser.add_argument("--models", nargs="+", default=["resnet34-unet", "unet"], help="models to measure")
    parser.add_argument("--repeats", type=int, default=3, help="one-image calls per path")
    parser.add_argument("--dir-repeats", type=int, default=1, help="directory calls per path")
    parser.add_argument("--test-images", type=int, default=None, help="only the first N test images (default: all)")
    parser.add_argument("--train-images", type=int, default=40, help="trainval images to train an absent run on")
    parser.add_argument("--image-size", type=int, default=256, help="image size to train an absent run at")
    parser.add_argument("--threads", type=int, default=None, help="--threads for both paths (default: the machine's)")
    parser.add_argument("--probability-images", type=int, default=20, help="test images whose probabilities are compared")
    parser.add_argument("--skip-timing", action="store_true", help="only compare the probabilities")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure RUN/model.int8.onnx (exported with --int8 when absent)")
    smoke = {"models": ["resnet34-unet"], "repeats": 1, "test_images": 4, "train_images": 8, "image_size": 64,
             "probability_images": 2, "runs_dir": SCRATCH}
    args = parse_args(parser, smoke)
    args.runs_dir.mkdir(parents=True, exist_ok=True)

    say(cpu_description())
    say(f"machine {load()}")
    verdicts = Verdicts(smoke=args.smoke)
    for model in args.models:
        measure(model, args, verdicts)
    say(f"\nmachine {load()}")
    if verdicts.missed:
        say("targets missed: " + "; ".join(verdicts.missed))
        sys.exit(verdicts.exit_code())
    say("timing and mask agreement skipped (--skip-timing): no targets checked" if args.skip_timing else "all targets met")


if __name__ == "__main__":
    main()
