"""Hardening, train rows: every bad input ends in one line naming the problem, the right exit code
(2 bad usage, 1 failure at run time) and no traceback. Driven through the real CLI (Typer's runner)."""

import shutil

import pytest
from typer.testing import CliRunner

from petseg_cli.cli.app import app
from synthetic import make_dataset

TINY = ["--image-size", "32", "-b", "4", "-e", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("hard") / "pets", n_trainval=12, n_test=4, size=(40, 40))


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("finished")
    result = CliRunner().invoke(app, ["train", *TINY, "--data-dir", str(data), "--runs-dir", str(runs), "--name", "done", "--keep-optimizer"])
    assert result.exit_code == 0, result.output
    return runs / "done"


def invoke(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout + result.stderr


def broken_copy(data, base, how):
    root = base / how
    shutil.copytree(data, root)
    if how == "no-trimaps":
        shutil.rmtree(root / "annotations" / "trimaps")
    elif how == "empty-split":
        (root / "annotations" / "trainval.txt").write_text("")
    elif how == "missing-images":
        for image in (root / "images").iterdir():
            image.unlink()
    return root


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


FLAG_ROWS = [
    ("epochs-0", ["--epochs", "0"], 2, "--epochs must be at least 1"),
    ("batch-0", ["-b", "0"], 2, "--batch-size must be at least 1"),
    ("batch-negative", ["-b", "-3"], 2, "--batch-size must be at least 1"),
    ("lr-negative", ["--learning-rate", "-1"], 2, "--learning-rate must be positive"),
    ("image-size-100", ["--image-size", "100"], 2, "--image-size must be a positive multiple of 32"),
    ("unknown-model", ["--model", "vit"], 2, "unknown model 'vit'; choose one of: unet, resnet34-unet"),
    pytest.param(
        "cuda-without-gpu", ["--device", "cuda"], 2, "no CUDA GPU; use --device cpu",
        marks=pytest.mark.skipif(has_cuda(), reason="this machine has a CUDA GPU: --device cuda is valid here"),
        id="cuda-without-gpu",
    ),
]


@pytest.mark.parametrize(("row", "args", "code", "message"), FLAG_ROWS, ids=[r[0] if isinstance(r, tuple) else r.id for r in FLAG_ROWS])
def test_train_bad_flags(row, args, code, message, data, tmp_path, monkeypatch):
    exit_code, output = invoke(["train", "--data-dir", str(data), *args], tmp_path, monkeypatch)
    assert exit_code == code, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # nothing created for a command that could not start


DATA_ROWS = [
    ("no-trimaps", "trimaps is missing", "petseg download"),
    ("empty-split", "the train split", "has no usable images"),
    ("missing-images", "no such file", "has no usable images"),
]


@pytest.mark.parametrize(("how", "first", "second"), DATA_ROWS, ids=[r[0] for r in DATA_ROWS])
def test_train_bad_data(how, first, second, data, tmp_path, monkeypatch):
    root = broken_copy(data, tmp_path, how)
    exit_code, output = invoke(["train", *TINY, "--data-dir", str(root)], tmp_path, monkeypatch)
    assert exit_code == 1, output
    assert first in output and second in output and "Traceback" not in output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, monkeypatch):
    (tmp_path / "junk").mkdir()
    exit_code, output = invoke(["train", "--resume", str(tmp_path / "junk")], tmp_path, monkeypatch)
    assert exit_code == 2 and "is not a petseg run" in output and "Traceback" not in output


def test_resume_of_a_completed_run_suggests_epochs(finished_run, tmp_path, monkeypatch):
    exit_code, output = invoke(["train", "--resume", str(finished_run)], tmp_path, monkeypatch)
    assert exit_code == 2 and "already finished" in output and "--epochs larger than 1" in output


def test_name_of_an_existing_run_is_refused_and_left_intact(finished_run, data, tmp_path, monkeypatch):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir()}
    args = ["train", *TINY, "--data-dir", str(data), "--runs-dir", str(finished_run.parent), "--name", "done"]
    exit_code, output = invoke(args, tmp_path, monkeypatch)
    assert exit_code == 2 and "already exists" in output and "--resume" in output
    assert {p.name: p.read_bytes() for p in finished_run.iterdir()} == before


TOML_ROWS = [
    ("syntax-error", "[train]\nepochs = 3\nbatch_size = = 2\n", "line 3"),
    ("unknown-key", "[train]\nepoch = 3\n", "unknown key 'epoch' in [train]"),
    ("wrong-type", "[train]\nbatch_size = 'eight'\n", "train.batch_size must be int"),
]


@pytest.mark.parametrize(("row", "text", "message"), TOML_ROWS, ids=[r[0] for r in TOML_ROWS])
def test_train_bad_petseg_toml(row, text, message, data, tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text(text)
    exit_code, output = invoke(["train", "--data-dir", str(data)], tmp_path, monkeypatch)
    assert exit_code == 2 and message in output and "petseg.toml" in output and "Traceback" not in output
