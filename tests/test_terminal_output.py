"""Output that fits a terminal: compare at 80-120 columns with no name or number cut, runs of the same
name told apart everywhere, plots that stay in range, and help text and errors in petseg's words (a closed pipe:
test_closed_pipe.py)."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from run_files import epoch_records, finished_summary, write_run

LONG = "resnet34-unet-lr3e-4-bs16-aug"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Two runs named alike in two folders (at 64 and 128 px) and one with a long name."""
    root = tmp_path_factory.mktemp("three")
    done = epoch_records([0.51, 0.6712, 0.66], [0.8, 0.6, 0.5], seconds=1234.5, images_per_s=12.25)
    stuck = epoch_records([0.0, 0.0], [0.7, 0.7], seconds=61.0, images_per_s=40.0)
    a = write_run(root / "exp-a" / "runs", "unet-bs8", "unet", done, finished_summary(done, "completed"), planned=3)
    b = write_run(root / "exp-b" / "runs", "unet-bs8", "unet", stuck, None, planned=50, image_size=128)
    c = write_run(root / "exp-a" / "runs", LONG, "resnet34-unet", done, finished_summary(done, "early_stop"), planned=30)
    return [a, b, c]


def compare(runs, *options, columns=None):
    env = {"COLUMNS": str(columns)} if columns else {}
    return run_cli("compare", *map(str, runs), *options, cwd=runs[0].parent, env=env)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_compare_fits_the_terminal_and_cuts_no_name_or_number(three_runs, width):
    result = compare(three_runs, columns=width)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width, result.stdout
    assert "…" not in result.stdout
    for name in ("exp-a/runs/unet-bs8", "exp-b/runs/unet-bs8", LONG):
        assert name in result.stdout  # whole, on one line
    assert "0.6712" in result.stdout and "128" in result.stdout  # best val Dice and image size


def test_compare_at_120_shows_more_columns_than_at_80(three_runs):
    narrow, wide = compare(three_runs, columns=80).stdout, compare(three_runs, columns=120).stdout
    assert len(wide.splitlines()[1]) > len(narrow.splitlines()[1])
    assert "model" in wide.split("┡")[0]


def test_compare_columns_option_chooses_them_and_never_cuts(three_runs):
    result = compare(three_runs, "--columns", "run,image_size,images_per_s", columns=80)
    assert result.returncode == 0, result.stderr
    header = result.stdout.split("┡")[0]  # the header may fold onto several lines
    assert "run" in header and "size" in header and "img/s" in header and "model" not in header
    everything = compare(three_runs, "--columns", "all", columns=80)
    assert "1:01:44" in everything.stdout  # train time (3 x 1234.5 s) is there
    assert all(LONG in line or LONG not in line for line in everything.stdout.splitlines())
    assert LONG in everything.stdout and "…" not in everything.stdout
    unknown = compare(three_runs, "--columns", "run,colour", columns=80)
    assert unknown.returncode == 2 and "--columns: no column 'colour'" in unknown.stderr


def test_csv_and_json_keep_every_field_and_tell_runs_apart(three_runs):
    rows = list(csv.DictReader(io.StringIO(compare(three_runs, "--format", "csv", columns=80).stdout)))
    records = json.loads(compare(three_runs, "--format", "json", columns=80).stdout)
    for table in (rows, records):
        assert sorted(r["run"] for r in table) == sorted(["exp-a/runs/unet-bs8", "exp-b/runs/unet-bs8", LONG])
        assert {str(r["image_size"]) for r in table} == {"64", "128"}
        assert {"path", "train_images", "fraction", "limit", "images_per_s", "weights_mb"} <= set(table[0])
    assert {r["path"] for r in records} == {str(p) for p in three_runs}


def test_plot_legend_tells_runs_apart_and_dice_stays_in_0_1(three_runs, tmp_path):
    from petseg_cli.commands.compare import run_labels
    from petseg_cli.run.plots import legend_labels
    from petseg_cli.run.stats import load_run_stats

    stats = [load_run_stats(p) for p in three_runs]
    labels = legend_labels(stats, run_labels(three_runs))
    assert len(set(labels)) == 3 and "exp-b/runs/unet-bs8 (128px)" in labels
    twice = legend_labels([stats[0], stats[0]])
    assert len(set(twice)) == 2

    result = compare(three_runs, "--plot", str(tmp_path / "curves.png"), columns=80)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_plot_axes_are_within_0_1_for_a_run_stuck_at_0(three_runs, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from petseg_cli.run.plots import plot_curves
    from petseg_cli.run.stats import load_run_stats

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    plot_curves([load_run_stats(three_runs[1])], tmp_path / "stuck.png")
    dice_axes = figures[0].axes[0]
    assert dice_axes.get_ylim() == (0.0, 1.0)
    assert len(figures[0].legends[0].get_texts()) == 1


def test_help_reads_plainly():
    top = run_cli("--help", cwd=REPO, env={"COLUMNS": "80"}).stdout
    assert "..." not in top.split("Commands:")[1]  # no description cut off
    evaluate = run_cli("evaluate", "--help", cwd=REPO, env={"COLUMNS": "80"}).stdout
    assert "Usage: petseg evaluate [OPTIONS] RUN..." in evaluate and "{RUN}" not in evaluate
    assert "<list[Path]>" not in evaluate and "[default: 0]" not in evaluate
    compare_help = run_cli("compare", "--help", cwd=REPO, env={"COLUMNS": "80"}).stdout
    assert "{runs}" not in compare_help and "<list[Path]>" not in compare_help
    infer_help = run_cli("infer", "--help", cwd=REPO).stdout
    assert "{INPUT}" not in infer_help and "<list[str]>" not in infer_help


@pytest.mark.parametrize("args, reason", [
    (["compare", "x", "--format", "yaml"], "'yaml' is not one of"),
    (["train", "--epochs", "abc"], "'abc' is not a whole number"),
    (["train", "--learning-rate", "fast"], "'fast' is not a number"),
])
def test_bad_values_are_explained_in_petsegs_words(args, reason):
    result = run_cli(*args, cwd=REPO)
    assert result.returncode == 2 and reason in result.stderr
    assert "Value error" not in result.stderr and "unable to parse" not in result.stderr
    assert "Input should be" not in result.stderr
