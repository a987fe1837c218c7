"""In a real terminal 80 columns wide (a pty), no line that train (with and without a time budget, its
Ctrl-C hint included), export, infer, evaluate, summary, compare or serve's start-up prints is wider:
messages wrap between words, the lines after the first indented."""

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios

import pytest

from conftest import as_from_a_shell, cli_environment

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_a_terminal(*args: str, cwd, columns: int = 80, until: str | None = None) -> tuple[int, list[str]]:
    """Run ``petseg ARGS`` with stdout and stderr on a pty of ``columns`` columns; its exit code and lines.
    With ``until``: once that text has appeared, the command gets a SIGINT (Ctrl-C), once."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in cli_environment({"TERM": "xterm-256color"}).items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "petseg_cli", *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
        close_fds=True, preexec_fn=as_from_a_shell,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
        if until is not None and until in ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")):
            process.send_signal(signal.SIGINT)
            until = None
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    lines = [line for raw in text.split("\n") for line in raw.split("\r") if line.strip()]
    return process.wait(timeout=600), lines


def assert_fits(lines: list[str], columns: int = 80) -> None:
    assert lines
    widest = max(lines, key=len)
    assert len(widest) <= columns, f"{len(widest)} columns: {widest}"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["evaluate", "{run}"], id="evaluate"),
        pytest.param(["summary", "{run}"], id="summary-run", marks=pytest.mark.slow),  # builds the model: ~5 s
        pytest.param(["summary", "resnet34-unet", "--image-size", "64"], id="summary-model", marks=pytest.mark.slow),
        pytest.param(["compare", "{run}"], id="compare"),
    ],
)
def test_no_line_is_wider_than_an_80_column_terminal(tiny_run, tmp_path, command):
    code, lines = in_a_terminal(*(part.format(run=tiny_run) for part in command), cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    assert len(lines) > 3
    widest = max(lines, key=len)
    assert len(widest) <= 80, f"{len(widest)} columns: {widest}"


@pytest.mark.slow
def test_train_with_a_budget_export_and_infer_fit_and_epoch_lines_show_the_size(dataset, tmp_path):
    args = ["train", "--data-dir", str(dataset), "--image-size", "32:64", "-b", "6", "-e", "2", "--time", "1h",
            "--recipe", "seed", "--precision", "fp32", "--runs-dir", str(tmp_path / "runs"), "--name", "r"]
    code, lines = in_a_terminal(*args, cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    assert_fits(lines)
    bars = [line for line in lines if line.startswith("epoch ") and "|" in line]
    assert bars, "\n".join(lines)  # tqdm drew its bar: this is a terminal
    assert any("left " in line for line in bars), bars
    epochs = [line for line in lines if line.startswith("epoch ") and "|" not in line]
    assert [line.split()[2] for line in epochs] == ["32px", "64px"], epochs  # the size a schedule trains at
    assert any(line.startswith("  ") for line in lines), "\n".join(lines)  # a long message went on, indented

    code, lines = in_a_terminal("export", str(tmp_path / "runs" / "r"), "--static", cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    assert_fits(lines)
    photo = next((dataset / "images").glob("*.jpg"))
    # paths as a user types them in the run's directory: a long absolute path is a word no terminal can wrap
    code, lines = in_a_terminal("infer", str(photo), "-o", "m.png", "--run", "runs/r", cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    assert_fits(lines)


@pytest.mark.slow
def test_the_ctrl_c_hint_and_serves_start_up_fit(dataset, tiny_run, tmp_path):
    args = ["train", "--data-dir", str(dataset), "--image-size", "32", "-b", "6", "-e", "50", "--recipe", "seed",
            "--precision", "fp32", "--runs-dir", str(tmp_path / "runs")]
    code, lines = in_a_terminal(*args, cwd=tmp_path, until="epoch   1/50")
    assert code == 130, "\n".join(lines)
    assert_fits(lines)
    words = " ".join(lines).split()
    assert "(petseg" in words and "--resume" in words  # wrapped between words, never inside one

    code, lines = in_a_terminal("serve", str(tiny_run), "--port", "0", cwd=tmp_path, until="http://")
    assert_fits(lines)
    assert any("http://127.0.0.1:" in line for line in lines), "\n".join(lines)
