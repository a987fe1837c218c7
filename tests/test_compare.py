import csv
import io
import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import invoke_cli
from petseg_cli.base import files
from petseg_cli.run import Measure
from petseg_cli.cli.app import app
from petseg_cli.commands.compare import COLUMN_KEYS, best_values
from run_files import epoch_records, finished_summary, write_run

TEST_DICE = 0.9123  # what the evaluated run's eval-test.json says
RUN_NAMES = ("a-real", "b-finished", "c-unfinished")
runner = CliRunner()


@pytest.fixture(scope="module")
def runs_dir(tiny_run, tmp_path_factory):
    """Three runs: a real one (the session's trained run, copied and evaluated), a finished and an
    unfinished one written directly, and a directory that is no run."""
    root = tmp_path_factory.mktemp("compare")
    real = root / "runs" / "a-real"
    real.mkdir(parents=True)
    for name in ("config.toml", "history.json", "best.pth", "last.pth"):
        shutil.copy(tiny_run / name, real / name)
    files.write_json_atomic(Measure("test").file(real, "json"), {"dice": TEST_DICE, "images": 10})
    done = epoch_records([0.5, 0.97, 0.9], [0.8, 0.6, 0.5], seconds=10.0, images_per_s=30.0)
    finished = finished_summary(done, "early_stop")
    write_run(root / "runs", "b-finished", "resnet34-unet", done, finished, planned=20, cbam=False)
    going = epoch_records([0.3, 0.1], [0.9, 0.85], seconds=5.0, images_per_s=50.0)
    write_run(root / "runs", "c-unfinished", "resnet34-unet", going, None, planned=10)
    (root / "runs" / "junk").mkdir()
    (root / "runs" / "junk" / "notes.txt").write_text("not a run")
    return root / "runs"


def paths(runs_dir):
    return [str(p) for p in sorted(runs_dir.iterdir())]


def history(run):
    return json.loads((run / "history.json").read_text())


def expected_order(runs_dir):
    """Best val Dice first: the real run's, 0.97 and 0.3 (the unfinished run's best so far)."""
    dice = {"a-real": history(runs_dir / "a-real")["summary"]["best_val_dice"], "b-finished": 0.97, "c-unfinished": 0.3}
    return sorted(dice, key=dice.get, reverse=True)


def invoke(runs_dir, *options):
    result = runner.invoke(app, ["compare", *paths(runs_dir), *options])
    assert result.exit_code == 0, result.output
    return result


def test_table_has_a_row_per_run_and_one_warning_for_the_junk(runs_dir):
    result = invoke_cli("compare", *paths(runs_dir), cwd=runs_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "junk" in warnings[0] and "not a petseg run" in warnings[0]
    assert "\x1b[" not in result.stdout  # a pipe gets no escape codes

    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert list(rows) == expected_order(runs_dir)
    assert "resnet34-unet (no-cbam)" in rows["b-finished"] and "early_stop" in rows["b-finished"]
    assert " 3/20 " in rows["b-finished"] and "0.9700" in rows["b-finished"] and "0:00:30" in rows["b-finished"]
    assert "unfinished" in rows["c-unfinished"] and " 2/10 " in rows["c-unfinished"]
    assert "0.3000" in rows["c-unfinished"] and "50.0" in rows["c-unfinished"]
    assert f"{TEST_DICE:.4f}" in rows["a-real"] and "completed" in rows["a-real"] and "22.94" in rows["a-real"]
    assert "—" in rows["b-finished"] and "—" in rows["c-unfinished"]  # no test Dice, no best.pth


def test_csv_parses_back_with_the_csv_module(runs_dir):
    rows = list(csv.DictReader(io.StringIO(invoke(runs_dir, "--format", "csv").stdout)))
    by_run = {row["run"]: row for row in rows}
    assert set(by_run) == set(RUN_NAMES)
    assert float(by_run["a-real"]["test_dice"]) == TEST_DICE and by_run["b-finished"]["test_dice"] == ""
    real = history(runs_dir / "a-real")["summary"]
    assert float(by_run["a-real"]["best_val_dice"]) == real["best_val_dice"]
    assert int(by_run["a-real"]["best_epoch"]) == real["best_epoch"]
    assert by_run["c-unfinished"]["stop_reason"] == "unfinished" and by_run["c-unfinished"]["best_epoch"] == "1"
    weights = (runs_dir / "a-real" / "best.pth").stat().st_size
    assert float(by_run["a-real"]["weights_mb"]) == pytest.approx(weights / 1e6, abs=1e-3)


def test_json_parses_back_with_plain_values(runs_dir):
    records = {r["run"]: r for r in json.loads(invoke(runs_dir, "--format", "json").stdout)}
    assert list(records) == expected_order(runs_dir)
    finished = records["b-finished"]
    assert finished["model"] == "resnet34-unet (no-cbam)" and finished["best_val_dice"] == 0.97
    assert (finished["epochs_run"], finished["epochs_planned"], finished["best_epoch"]) == (3, 20, 2)
    assert finished["train_seconds"] == 30.0 and finished["seconds_per_epoch"] == 10.0
    assert finished["test_dice"] is None and finished["weights_mb"] is None
    assert records["a-real"]["test_dice"] == TEST_DICE
    assert set(COLUMN_KEYS) <= set(finished)


@pytest.mark.parametrize(("fmt", "separator"), [("markdown", "|"), ("latex", "&")])
def test_markdown_and_latex_have_a_row_per_run(runs_dir, fmt, separator):
    text = invoke(runs_dir, "--format", fmt).stdout
    assert "\x1b[" not in text
    table = [
        [cell.strip() for cell in line.strip().strip("|").removesuffix("\\\\").split(separator)]
        for line in text.splitlines()
        if separator in line
    ]
    assert table[0][:2] == ["run", "model"] and "best val Dice" in table[0]
    rows = [cells for cells in table if cells[0] in RUN_NAMES]
    assert [cells[0] for cells in rows] == expected_order(runs_dir)
    assert all(len(cells) == len(COLUMN_KEYS) for cells in rows)
    if fmt == "latex":
        assert text.startswith("\\begin{tabular}") and text.rstrip().endswith("\\end{tabular}")
        assert "early\\_stop" in text


def test_sort_by_any_column_best_first(runs_dir):
    by_time = json.loads(invoke(runs_dir, "--format", "json", "--sort", "train_seconds").stdout)
    assert [r["train_seconds"] for r in by_time] == sorted(r["train_seconds"] for r in by_time)
    by_name = json.loads(invoke(runs_dir, "--format", "json", "--sort", "run").stdout)
    assert [r["run"] for r in by_name] == list(RUN_NAMES)
    by_test = json.loads(invoke(runs_dir, "--format", "json", "--sort", "test_dice").stdout)
    assert by_test[0]["run"] == "a-real"  # the only one with a test Dice; the others follow

    unknown = runner.invoke(app, ["compare", *paths(runs_dir), "--sort", "speed"])
    assert unknown.exit_code == 2 and "choose one of: run, model" in unknown.stderr


def test_best_value_of_each_figure_column_is_highlighted(runs_dir):
    records = json.loads(invoke(runs_dir, "--format", "json").stdout)
    best = best_values(records)
    figures = lambda key: [r[key] for r in records if r[key] is not None]  # noqa: E731
    # The real run's seconds depend on the machine: the best is whichever run was quickest.
    assert best["best_val_dice"] == 0.97 and best["train_seconds"] == min(figures("train_seconds"))
    assert best["images_per_s"] == max(figures("images_per_s")) and len(figures("train_seconds")) == 3
    assert "test_dice" not in best  # only one run has one: nothing to compare it with
    assert "batch_size" not in best  # a setting, not a figure


def test_plot_writes_a_png_of_all_runs(runs_dir, tmp_path):
    target = tmp_path / "curves.png"
    invoke(runs_dir, "--plot", str(target))
    png = target.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_broken_runs_are_skipped_with_the_reason_and_none_left_fails(runs_dir, tmp_path):
    broken = write_run(tmp_path, "broken", "unet", [], None, planned=1)
    (broken / "history.json").write_text("{ not json")
    result = runner.invoke(app, ["compare", str(broken), str(runs_dir / "a-real")])
    assert result.exit_code == 0 and "skipping" in result.stderr and "not valid JSON" in result.stderr
    assert "a-real" in result.stdout and "broken" not in result.stdout

    nothing = invoke_cli("compare", str(broken), str(runs_dir / "junk"), cwd=tmp_path)
    assert nothing.returncode == 1 and "no petseg run to compare" in nothing.stderr
    assert "Traceback" not in nothing.stderr
