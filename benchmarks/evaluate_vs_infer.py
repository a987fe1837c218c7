"""Does the Dice that `petseg evaluate` reports belong to the masks that `petseg infer` writes?

Runs `petseg evaluate RUN --split test` (per-image Dice in eval-test-best-original.csv) and `petseg infer`
on the same photos, scores each written PNG against its full-size trimap, and prints the largest
difference (target: at most 1e-4 on every photo).

    python benchmarks/evaluate_vs_infer.py --run runs/NAME [--data-dir ../shared/data/oxford-pet-sample]

Its work is the run's and the data's: ``--smoke`` changes no size (give it a tiny run and data), only
that a missed target does not make the exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import ENV, REPO, Verdicts, load, parse_args, say

sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pet-sample"
TARGET = 1e-4


def petseg(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "petseg_cli", *args], env=ENV, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # infer exits 1 when a listed photo cannot be read
        sys.exit(f"petseg {' '.join(args)} failed:\n{done.stderr}")


def main() -> int:
    from petseg_cli.data.images import read_label
    from petseg_cli.data.oxford_pet import split_samples, trimap_to_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parse_args(parser, smoke={})

    petseg("evaluate", str(args.run), "--split", "test", "--data-dir", str(args.data_dir))
    with open(args.run / "eval-test-best-original.csv") as f:
        scored = {row["name"]: float(row["dice"]) for row in csv.DictReader(f)}
    samples = [s for s in split_samples(args.data_dir, "test") if s.name in scored]
    with tempfile.TemporaryDirectory() as out:
        petseg("infer", *(str(s.image_path) for s in samples), "--run", str(args.run), "-o", out)
        differences = []
        for sample in samples:
            mask = np.asarray(Image.open(Path(out) / f"{sample.name}.png")) != 0
            truth = trimap_to_mask(read_label(sample.trimap_path)) != 0
            total = mask.sum() + truth.sum()
            dice = 1.0 if total == 0 else 2 * float((mask & truth).sum()) / float(total)
            differences.append(abs(dice - scored[sample.name]))
    verdicts = Verdicts(smoke=args.smoke)
    worst = max(differences)
    say(f"{len(samples)} test photos of {args.data_dir}: mean Dice {np.mean(list(scored.values())):.4f} ({load()})")
    say(f"largest |evaluate's Dice - Dice of infer's mask| {worst:.2e} (target <= {TARGET:g}): {verdicts.check(worst <= TARGET, 'agreement')}")
    return verdicts.exit_code()


if __name__ == "__main__":
    sys.exit(main())
