"""`petseg train --name X --resume-if-exists` (in one process): starts runs/X, resumes it when it holds a
resumable last.pth with the same checks as --resume, and leaves a finished run alone with exit 0."""

import json

import pytest
from typer.testing import CliRunner

from petseg_cli.cli.app import app
from synthetic import make_dataset

TINY = ["--model", "unet", "--image-size", "32", "-b", "4", "--precision", "fp32", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ifexists") / "pets", n_trainval=10, n_test=1, size=(32, 32))


def train(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    (cwd / "petseg.toml").write_text("")
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.stdout + result.stderr


def epochs(run_dir):
    return [e["epoch"] for e in json.loads((run_dir / "history.json").read_text())["epochs"]]


@pytest.mark.slow  # three trainings: ~7 s
def test_starts_then_resumes_then_leaves_the_finished_run_alone(data, tmp_path, monkeypatch):
    common = [*TINY, "--data-dir", str(data), "--name", "x", "--resume-if-exists"]
    code, output = train([*common, "-e", "1", "--keep-optimizer"], tmp_path, monkeypatch)
    assert code == 0, output
    assert epochs(tmp_path / "runs" / "x") == [1]

    code, output = train([*common, "-e", "2"], tmp_path, monkeypatch)
    assert code == 0, output
    assert "resuming" in output and "after epoch 1" in output
    assert epochs(tmp_path / "runs" / "x") == [1, 2]

    before = (tmp_path / "runs" / "x" / "history.json").read_bytes()
    code, output = train([*common, "-e", "2"], tmp_path, monkeypatch)  # finished, its optimiser state dropped
    assert code == 0, output
    assert "nothing to train" in output and "epoch" not in output.split("nothing to train")[0]
    assert (tmp_path / "runs" / "x" / "history.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x"]


def test_a_finished_run_that_kept_its_optimiser_is_left_alone_too(data, tmp_path, monkeypatch):
    common = [*TINY, "--data-dir", str(data), "--name", "k", "--resume-if-exists", "-e", "1", "--keep-optimizer"]
    assert train(common, tmp_path, monkeypatch)[0] == 0
    code, output = train(common, tmp_path, monkeypatch)
    assert code == 0, output
    assert "nothing to train" in output and "already finished" in output
    assert epochs(tmp_path / "runs" / "k") == [1]


def test_refuses_a_flag_that_changes_the_experiment_in_one_line(data, tmp_path, monkeypatch):
    common = [*TINY, "--data-dir", str(data), "--name", "c", "--resume-if-exists", "-e", "1", "--keep-optimizer"]
    assert train(common, tmp_path, monkeypatch)[0] == 0
    code, output = train([*common, "-e", "2", "-lr", "0.5"], tmp_path, monkeypatch)
    assert code == 2, output
    assert "--learning-rate cannot change when resuming" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1


def test_an_empty_directory_left_by_a_killed_start_is_started(data, tmp_path, monkeypatch):
    (tmp_path / "runs" / "e").mkdir(parents=True)
    code, output = train([*TINY, "--data-dir", str(data), "--name", "e", "--resume-if-exists", "-e", "1"], tmp_path, monkeypatch)
    assert code == 0, output
    assert epochs(tmp_path / "runs" / "e") == [1]


@pytest.mark.parametrize("args", [["--resume-if-exists"], ["--resume-if-exists", "--name", "x", "--resume", "runs/x"]])
def test_needs_a_name_and_no_resume(args, tmp_path, monkeypatch):
    code, output = train([*TINY, *args], tmp_path, monkeypatch)
    assert code == 2 and "--resume-if-exists needs --name" in output
    assert len(output.strip().splitlines()) == 1
