"""A pipe whose reader has gone: `petseg ... | head -1` (stdout only: stderr still reaches the terminal, and
shows no traceback) and `petseg ... 2>&1 | head -1` (both streams). Every command that prints ends with its
usual exit status and still writes the files it was asked to write."""

import os
import subprocess
import sys

import pytest

from conftest import cli_environment, run_cli


def into_a_closed_pipe(*args: str, cwd, stderr_too: bool = True) -> subprocess.CompletedProcess:
    """Run petseg with stdout (and with ``stderr_too`` stderr as well: ``2>&1 | head``) on a pipe whose
    reader has already gone (once head has exited); otherwise stderr is captured, as a terminal would show it."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "petseg_cli", *args], cwd=cwd, stdout=write,
            stderr=write if stderr_too else subprocess.PIPE, env=cli_environment(None), timeout=900, text=True,
        )
    finally:
        os.close(write)


def both_streams_into_a_closed_pipe(*args: str, cwd) -> int:
    """``petseg ARGS 2>&1 | head``'s exit status, head gone."""
    return into_a_closed_pipe(*args, cwd=cwd).returncode


def stdout_into_a_closed_pipe(*args: str, cwd) -> int:
    """``petseg ARGS | head``'s exit status, head gone; what reached stderr must hold no traceback."""
    result = into_a_closed_pipe(*args, cwd=cwd, stderr_too=False)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    return result.returncode


@pytest.mark.slow  # a subprocess plotting a run: ~7 s
def test_summary_plot_into_a_closed_pipe_exits_0_and_writes_the_plot(tiny_run, tmp_path):
    (tiny_run / "curves.png").unlink(missing_ok=True)
    assert stdout_into_a_closed_pipe("summary", str(tiny_run), "--plot", cwd=tmp_path) == 0
    assert (tiny_run / "curves.png").is_file()


@pytest.mark.slow
def test_train_into_a_closed_pipe_exits_0_and_writes_the_run(dataset, tmp_path):
    status = both_streams_into_a_closed_pipe(
        "train", "--data-dir", str(dataset), "--image-size", "32", "-e", "1", "-b", "4", "--limit", "8",
        "--runs-dir", str(tmp_path / "runs"), "--name", "piped", "--no-cache", cwd=tmp_path,
    )
    assert status == 0
    assert (tmp_path / "runs" / "piped" / "best.pth").is_file()


@pytest.mark.slow
def test_evaluate_into_a_closed_pipe_exits_0_and_writes_its_files(tiny_run, tmp_path):
    result = tiny_run / "eval-test-best-training-size.json"
    result.unlink(missing_ok=True)
    assert both_streams_into_a_closed_pipe("evaluate", str(tiny_run), "--at", "training", cwd=tmp_path) == 0
    assert result.is_file()


@pytest.mark.slow
def test_infer_into_a_closed_pipe_exits_0_and_writes_the_masks(tiny_run, dataset, tmp_path):
    image = next((dataset / "images").glob("*.jpg"))
    masks = tmp_path / "masks"
    assert stdout_into_a_closed_pipe("infer", str(image), "--run", str(tiny_run), "-o", str(masks), cwd=tmp_path) == 0
    assert (masks / f"{image.stem}.png").is_file()


@pytest.mark.slow
def test_export_into_a_closed_pipe_exits_0_and_writes_the_model(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model.onnx"
    assert both_streams_into_a_closed_pipe("export", str(tiny_run), "-o", str(model), "--static", cwd=tmp_path) == 0
    assert model.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["compare"], ["summary"]])
def test_reports_on_a_run_into_a_closed_pipe_exit_0(command, tiny_run, tmp_path):
    assert both_streams_into_a_closed_pipe(*command, str(tiny_run), cwd=tmp_path) == 0


def test_download_of_a_dataset_already_there_into_a_closed_pipe_exits_0(dataset, tmp_path):
    assert both_streams_into_a_closed_pipe("download", "--data-dir", str(dataset), cwd=tmp_path) == 0


@pytest.mark.parametrize("args", [
    ["--help"],
    pytest.param(["summary", "resnet34-unet", "--image-size", "64"], marks=pytest.mark.slow),  # builds the model: ~5 s
])
def test_help_and_a_model_summary_into_a_closed_pipe_exit_0(args, tmp_path):
    assert both_streams_into_a_closed_pipe(*args, cwd=tmp_path) == 0


def test_an_error_into_a_closed_pipe_keeps_its_exit_status(tmp_path):
    args = ("evaluate", str(tmp_path / "no-such-run"))
    usual = run_cli(*args, cwd=tmp_path)
    assert usual.returncode == 2 and "no-such-run does not exist: pass a run directory" in usual.stderr
    assert both_streams_into_a_closed_pipe(*args, cwd=tmp_path) == usual.returncode
