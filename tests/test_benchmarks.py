"""Every script in benchmarks/ runs, in its --smoke mode (the same code path at tiny sizes), so that a change
to petseg that breaks a benchmark fails here rather than on the next person who measures.

Each script runs as a user starts it (``python benchmarks/NAME.py --smoke``, this checkout importable) on
the session's generated dataset and, where it measures a trained run, the session's tiny run. A smoke run
does not hold its figures to the targets, so each test checks the lines that show the figures (and, where
the result cannot depend on speed, that the target is met).
"""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_environment

BENCHMARKS = REPO / "benchmarks"
LIBRARY = {"common.py"}  # imported by the scripts, not one of them
NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?"


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python benchmarks/NAME.py --smoke ARGS`` in ``cwd``, as a user would start it."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", *args], cwd=cwd, env=cli_environment(None),
        capture_output=True, text=True, timeout=900,
    )


def exported_runs(run: Path, tmp_path: Path) -> Path:
    """A runs directory holding a copy of ``run`` with its exported files (fp32 and int8, made once for the
    whole run: conftest.py's tiny_run_exports) as the resnet34-unet run the scripts measure, so that they
    neither train nor export one. (Their `petseg export` calls when a file is absent are the commands
    test_export.py and test_quantize.py run.)"""
    shutil.copytree(run, tmp_path / "runs" / "resnet34-unet")
    return tmp_path / "runs"


def on_data(data: Path, run: Path, tmp: Path) -> list[str]:
    return ["--data-dir", str(data)]


# Script -> (its arguments, given the dataset, the tiny run and a scratch directory; patterns its output must hold).
SMOKE = {
    "evaluate_vs_infer": (
        lambda data, run, tmp: ["--data-dir", str(data), "--run", str(run)],
        [rf"test photos of .*: mean Dice {NUMBER}", rf"largest \|evaluate's Dice - Dice of infer's mask\| {NUMBER} "
         r"\(target <= 0.0001\): met"],
    ),
    "gpu_speed": (
        on_data,
        [r"device: (CPU|.*GPU|NVIDIA.*), torch", rf"resnet34-unet\s+\w+, \d+ workers: synthetic\s+{NUMBER} images/s.*"
         rf"pipeline\s+{NUMBER} images/s.*data side alone\s+{NUMBER} images/s"],
    ),
    "infer_speed": (
        lambda data, run, tmp: ["--data-dir", str(data), "--runs-dir", str(exported_runs(run, tmp))],
        [rf"median: torch {NUMBER} s, onnx {NUMBER} s, int8 {NUMBER} s", r"masks agree on .* of the pixels of 4 images",
         rf"model alone: int8/fp32 ONNX images/s = {NUMBER}x", rf"files: fp32 {NUMBER} MB, int8 {NUMBER} MB"],
    ),
    "runtimes": (
        lambda data, run, tmp: ["--data-dir", str(data), "--runs-dir", str(exported_runs(run, tmp))],
        [rf"the model alone: 4 photos in batches of 2", rf"ort-fp32 {NUMBER}, ", rf"\| ort-fp32 \| {NUMBER} \| {NUMBER} \|",
         r"fastest whole command: "],
    ),
    "profile_step": (
        lambda data, run, tmp: [],
        [r"resnet34-unet, 32 px, batch 2", r"group\s+ms/step\s+share", rf"\nencoder\s+{NUMBER}\s+{NUMBER}%",
         r"top 5 operators by self time"],
    ),
    "recipe": (
        on_data,
        [rf"RESULT resnet34-unet recipe=seed epochs=1: best val Dice {NUMBER}",
         rf"GAIN resnet34-unet default vs seed: test Dice [+-]{NUMBER} per image"],
    ),
    "recipe_ablation": (
        on_data,
        [r"CPU: .*avx512_bf16 (yes|no)", r"2 training processes at once \(1 arm\(s\) beside their baselines\), one thread each",
         rf"\| no_rotate90 \| {NUMBER} \({NUMBER}\) \| [+-]{NUMBER} \([+-]{NUMBER}\) \| [+-]{NUMBER} \| {NUMBER} \({NUMBER}\) \| [+-]{NUMBER} \| 1\.0 \| ",
         rf"\| tta_scales \| {NUMBER} \({NUMBER}\) \| [+-]{NUMBER} \([+-]{NUMBER}\) \| [+-]{NUMBER} \| {NUMBER} \({NUMBER}\) \| [+-]{NUMBER} \|",
         rf"Baselines \(today's default\), 1 run\(s\) over all waves: val Dice mean {NUMBER}", r"plot .*ablation\.png"],
    ),
    "reference": (
        on_data,
        [rf'\{{"epoch": 1, "images": 8, "seconds": {NUMBER}, "images_per_s": {NUMBER}, "train_loss": {NUMBER}\}}'],
    ),
    "serve_abuse": (
        lambda data, run, tmp: ["--run", str(run), "--photo", str(sorted((data / "images").glob("*.jpg"))[0])],
        [r"burst: 4 answers in", r"every answer 200, 413 or 503, no failed connection: met",
         r"same mask as before: met", r"server exit code after SIGTERM: 0"],
    ),
    "serve_load": (
        lambda data, run, tmp: ["--data-dir", str(data), "--run", str(run)],
        [rf"serve, batching on\s+4/4 requests in\s+{NUMBER} s\s+{NUMBER} images/s",
         rf"serve, batching off\s+4/4 requests", rf"petseg infer\s+\d+ photos in\s+{NUMBER} s", r"errors: 0 \(target 0\): met"],
    ),
    "time_to_dice": (
        on_data,
        [r"model\s+arm\s+seed\s+epochs\s+wall s\s+budget s\s+val Dice\s+test Dice",
         *(rf"resnet34-unet\s+{arm}\s+mean\s+1\.0\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}" for arm in ("seed", "default", "time T", "time T/2")),
         r"plot .*time_to_dice\.png"],
    ),
    "train_speed": (
        on_data,
        [rf"== petseg --help: {NUMBER} s", rf"== peak memory, resnet34-unet batch 4, 32 px: RSS {NUMBER} MB",
         rf"== petseg infer one.jpg -o mask.png: {NUMBER} s", rf"resnet34-unet\s+reference\s+{NUMBER} images/s",
         rf"resnet34-unet petseg default / reference: {NUMBER}x", rf"auto / faster = {NUMBER}%",
         rf"difference {NUMBER} \(target <= 0.01\)", r"done \(load"],
    ),
}
SLOW = set(SMOKE)  # each over 3 s (measured times in the lead's report); none is in the fast tier


def test_every_script_in_benchmarks_has_a_smoke_test():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py") if path.name not in LIBRARY}
    assert scripts == set(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_each_script_parses_its_normal_options_and_offers_smoke(name, monkeypatch, capsys):
    """``NAME.py --help``, in this process (no interpreter to start): the parser builds and lists --smoke."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when the script runs: its directory on sys.path
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), "--help"])
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")
    finally:
        for module in ("common", "recipe"):  # the benchmarks' own modules, generic names: not left for others
            if module not in before:
                sys.modules.pop(module, None)
    assert exit_.value.code in (0, None)
    assert "--smoke" in capsys.readouterr().out


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in sorted(SMOKE)])
def test_each_script_runs_in_its_smoke_mode(name, dataset, tiny_run, tmp_path, request):
    if name in ("infer_speed", "runtimes"):
        request.getfixturevalue("tiny_run_exports")  # its fp32 and int8 files in tiny_run, made once for the run
    arguments, patterns = SMOKE[name]
    result = run_script(name, *arguments(dataset, tiny_run, tmp_path), cwd=tmp_path)
    assert result.returncode == 0, f"{name}.py --smoke exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "smoke mode" in result.stdout
    for pattern in patterns:
        assert re.search(pattern, result.stdout), f"{name}.py --smoke printed no line matching {pattern!r}:\n{result.stdout[-3000:]}"
