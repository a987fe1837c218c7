"""A newcomer's first run: part of the data (--fraction, --limit), an estimate before the first epoch,
a last.pth without optimiser state once the run is done, and a warning for a degenerate model."""

import json
import re
import tomllib

import pytest
import torch

from conftest import invoke_cli
from petseg_cli.data.oxford_pet import subset_sizes
from petseg_cli.predict.metrics import degenerate_warning

TINY = ["--model", "resnet34-unet", "--image-size", "32", "-b", "4"]


def test_subset_sizes_shrink_val_in_proportion():
    assert subset_sizes(3312, 368, 1.0, 0) == (3312, 368)
    assert subset_sizes(3312, 368, 0.1, 0) == (331, 37)
    assert subset_sizes(3312, 368, 1.0, 120) == (120, 13)
    assert subset_sizes(135, 15, 1.0, 120) == (120, 13)  # the same work on the 302-image sample
    assert subset_sizes(18, 2, 0.01, 0) == (1, 1)  # never empty
    assert subset_sizes(18, 2, 1.0, 500) == (18, 2)


@pytest.mark.slow
def test_limit_trains_on_part_records_it_estimates_and_drops_the_optimiser(dataset, tmp_path):
    result = invoke_cli("train", *TINY, "-e", "2", "--limit", "5", "--data-dir", str(dataset), "--name", "part", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "part"
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["data"]["limit"] == 5 and config["data"]["fraction"] == 1.0
    assert config["run"]["images"] == {"train": 5, "val": 1}
    assert "5 of 18 train and 1 of 2 val images" in result.stderr
    # 2 epochs of 1 step (5 images, batch 4): too short to time steps first; the time left shows once epoch 1 has run.
    assert "estimated time: after epoch 1 (a run of 2 training steps is too short to time some first)" in result.stderr
    assert "left)" in result.stdout  # the run's ETA after epoch 1

    last, best = run / "last.pth", run / "best.pth"
    assert torch.load(last, weights_only=True)["optimizer"] is None
    assert last.stat().st_size < 1.2 * best.stat().st_size  # weights only: Adam's two moments are gone
    refused = invoke_cli("train", "--resume", str(run), "-e", "4", cwd=tmp_path)
    assert refused.returncode == 2 and "optimiser state was dropped" in refused.stderr
    assert "Traceback" not in refused.stderr

    kept = invoke_cli("train", *TINY, "-e", "1", "--fraction", "0.5", "--keep-optimizer", "--data-dir", str(dataset),
                   "--name", "kept", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    kept_run = tmp_path / "runs" / "kept"
    assert tomllib.loads((kept_run / "config.toml").read_text())["run"]["images"] == {"train": 9, "val": 1}
    assert torch.load(kept_run / "last.pth", weights_only=True)["optimizer"] is not None
    more = invoke_cli("train", "--resume", str(kept_run), "-e", "2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert len(json.loads((kept_run / "history.json").read_text())["epochs"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--fraction", "0"], "--fraction must be more than 0 and at most 1, got 0.0"),
    (["--fraction", "1.5"], "--fraction must be more than 0 and at most 1"),
    (["--limit", "-3"], "--limit must be 0 (no limit) or more, got -3"),
])
def test_bad_fraction_or_limit_is_one_line(args, message, dataset, tmp_path):
    result = invoke_cli("train", *args, "--data-dir", str(dataset), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_degenerate_warning_names_what_the_model_predicts():
    assert "background almost everywhere" in degenerate_warning(0.001, 0.3)
    assert "pet almost everywhere" in degenerate_warning(0.995, 0.3)
    assert degenerate_warning(0.25, 0.3) is None


@pytest.mark.slow
def test_evaluate_warns_when_the_model_predicts_only_background(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "blank"
    shutil.copytree(tiny_run, run)
    best = torch.load(run / "best.pth", weights_only=True)
    best["state_dict"]["head.weight"].zero_()
    best["state_dict"]["head.bias"].copy_(torch.tensor([10.0, -10.0]))  # background wins every pixel
    torch.save(best, run / "best.pth")
    result = invoke_cli("evaluate", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "predicts background almost everywhere" in result.stderr


@pytest.mark.slow
def test_sample_sheet_has_a_colour_key(tiny_run, monkeypatch):
    from matplotlib.figure import Figure
    from typer.testing import CliRunner

    from petseg_cli.cli.app import app

    keys = []
    original = Figure.legend

    def recording(self, *args, **kwargs):  # records what matplotlib draws, and draws it
        legend = original(self, *args, **kwargs)
        keys.extend(text.get_text() for text in legend.get_texts())
        return legend

    monkeypatch.setattr(Figure, "legend", recording)
    result = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--visualize", "2"])
    assert result.exit_code == 0, result.output
    assert any(k.startswith("prediction") for k in keys) and any(k.startswith("ground truth") for k in keys)


def test_steps_are_timed_first_only_when_they_cost_at_most_a_tenth_of_the_run():
    from petseg_cli.train.clock import TIMED_STEPS, worth_timing

    steps = 10 * (1 + TIMED_STEPS)  # the warm-up step and the timed ones
    assert worth_timing(steps) and worth_timing(1000)
    assert not worth_timing(steps - 1) and not worth_timing(0)


@pytest.mark.slow
def test_a_run_long_enough_is_estimated_from_timed_steps_before_its_first_epoch(dataset, tmp_path):
    args = ["--model", "resnet34-unet", "--image-size", "64", "-b", "1", "-e", "3", "--limit", "14"]  # 42 steps
    result = invoke_cli("train", *args, "--data-dir", str(dataset), "--name", "timed", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"estimated time: \S+ per epoch, \S+ for 3 epochs \(less if it stops early; from 3 timed steps\)", result.stderr), result.stderr
