"""`--resume` continues one experiment: flags that would change it are refused in one line naming the flag
and the run's value, and a stopped run is told what really makes it train longer."""

import json

import pytest
from typer.testing import CliRunner

from petseg_cli.cli.app import app
from synthetic import make_dataset

TINY = ["--image-size", "32", "-b", "4", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume") / "pets", n_trainval=12, n_test=4, size=(40, 40))


def train(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished resnet34-unet run of 1 epoch at 32 px that kept its optimiser state: resumable."""
    runs = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["train", *TINY, "-e", "1", "--keep-optimizer", "--data-dir", str(data), "--runs-dir", str(runs), "--name", "r"])
    assert result.exit_code == 0, result.output
    return runs / "r"


CHANGING_ROWS = [
    ("model", ["--model", "unet"], "--model cannot change when resuming", "model.name = 'resnet34-unet'"),
    ("no-cbam", ["--no-cbam"], "--no-cbam cannot change when resuming", "model.cbam = True"),
    ("image-size", ["--image-size", "64"], "--image-size cannot change when resuming", "data.image_size = 32"),
    ("batch-size", ["-b", "2"], "--batch-size cannot change when resuming", "train.batch_size = 4"),
    ("seed", ["--seed", "3"], "--seed cannot change when resuming", "train.seed = 0"),
    ("learning-rate", ["-lr", "0.1"], "--learning-rate cannot change when resuming", "train.learning_rate = "),
    ("no-augment", ["--no-augment"], "--no-augment cannot change when resuming", "augment.enabled = True"),
    ("runs-dir", ["--runs-dir", "elsewhere"], "--runs-dir cannot change when resuming", "train.runs_dir"),
    ("name", ["--name", "other"], "--name cannot be used with --resume", ""),
    ("config", ["--config", "petseg.toml"], "--config cannot be used with --resume", ""),
]


@pytest.mark.parametrize(("row", "args", "message", "value"), CHANGING_ROWS, ids=[r[0] for r in CHANGING_ROWS])
def test_resume_refuses_flags_that_change_the_experiment(row, args, message, value, run, tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text("")
    before = (run / "history.json").read_bytes()
    code, output = train(["--resume", str(run), "-e", "3", *args], tmp_path, monkeypatch)
    assert code == 2, output
    assert message in output and value in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert (run / "history.json").read_bytes() == before


def test_resume_accepts_a_flag_that_repeats_the_runs_value(run, tmp_path, monkeypatch):
    """The same --batch-size the run has changes nothing, so it is no reason to refuse; the run's epochs
    are then extended (a machine setting like --workers may change too)."""
    code, output = train(["--resume", str(run), "-e", "2", "-b", "4", "--workers", "0"], tmp_path, monkeypatch)
    assert code == 0, output
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2]


@pytest.mark.slow
def test_an_early_stopped_run_is_told_to_raise_patience_and_that_works(data, tmp_path, monkeypatch):
    """A learning rate of ~0 keeps val Dice from improving after epoch 1: patience 1 stops after epoch 2."""
    runs = tmp_path / "runs"
    args = [*TINY, "-e", "4", "--patience", "1", "-lr", "1e-30", "--keep-optimizer", "--data-dir", str(data), "--runs-dir", str(runs), "--name", "es"]
    code, output = train(args, tmp_path, monkeypatch)
    history = json.loads((runs / "es" / "history.json").read_text())
    assert code == 0 and history["summary"]["stop_reason"] == "early_stop", output
    stopped_at = history["summary"]["epochs_run"]
    assert stopped_at < 4

    code, output = train(["--resume", str(runs / "es"), "-e", "10"], tmp_path, monkeypatch)
    assert code == 2 and "--patience larger than 1" in output and "--epochs" not in output, output

    code, output = train(["--resume", str(runs / "es"), "--patience", "2"], tmp_path, monkeypatch)
    assert code == 0, output
    epochs = [e["epoch"] for e in json.loads((runs / "es" / "history.json").read_text())["epochs"]]
    assert epochs[: stopped_at + 1] == list(range(1, stopped_at + 2))  # it trained past where it had stopped
