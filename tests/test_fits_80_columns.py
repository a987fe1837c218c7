"""In a real terminal 80 columns wide (a pty), no line that evaluate, summary or compare prints is wider."""

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

from conftest import cli_environment

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_a_terminal(*args: str, cwd, columns: int = 80) -> tuple[int, list[str]]:
    """Run ``petseg ARGS`` with stdout and stderr on a pty of ``columns`` columns; its exit code and lines."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in cli_environment({"TERM": "xterm-256color"}).items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "petseg_cli", *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
        close_fds=True,
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
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    lines = [line for raw in text.split("\n") for line in raw.split("\r") if line.strip()]
    return process.wait(timeout=600), lines


@pytest.mark.parametrize(
    "command",
    [["evaluate", "{run}"], ["summary", "{run}"], ["summary", "resnet34-unet", "--image-size", "64"], ["compare", "{run}"]],
    ids=["evaluate", "summary-run", "summary-model", "compare"],
)
def test_no_line_is_wider_than_an_80_column_terminal(tiny_run, tmp_path, command):
    code, lines = in_a_terminal(*(part.format(run=tiny_run) for part in command), cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    assert len(lines) > 3
    widest = max(lines, key=len)
    assert len(widest) <= 80, f"{len(widest)} columns: {widest}"


@pytest.mark.slow
def test_the_training_bar_shows_the_time_left_in_an_80_column_terminal(dataset, tmp_path):
    args = ["train", "--data-dir", str(dataset), "--image-size", "32", "-b", "2", "-e", "2", "--recipe", "seed",
            "--precision", "fp32", "--runs-dir", str(tmp_path / "runs")]
    code, lines = in_a_terminal(*args, cwd=tmp_path)
    assert code == 0, "\n".join(lines)
    bars = [line for line in lines if line.startswith("epoch ") and "|" in line]
    assert bars, "\n".join(lines)  # tqdm drew its bar: this is a terminal
    assert all(len(line) <= 80 for line in bars), max(bars, key=len)
    assert any("left " in line for line in bars), bars
