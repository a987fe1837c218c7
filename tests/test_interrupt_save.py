"""Ctrl-C during training: a second signal never cuts a checkpoint save short, and every message says
what the run really keeps. The signals land while torch.save is still writing last.pth (the U-Net's
last.pth is hundreds of MB: the write takes a while), and petseg_with_faults.py's slow save keeps it going
until the test has sent both."""

import json
import signal
import sys
import time

import pytest
import torch

from conftest import invoke_cli, start_cli

UNET_TINY = ["--model", "unet", "--image-size", "32", "-b", "4", "-e", "3"]


def temporaries(run, name):
    return [p for p in run.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")] if run.is_dir() else []


def wait_for(condition, process, limit=300):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended too soon: {process.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("the moment never came")


def read_until(process, words):
    """The process's stderr lines up to the first that holds ``words`` (reading blocks: no timing)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if words in line:
            return "".join(seen)
    raise AssertionError(f"never said {words!r}: {''.join(seen)}")


# last.pth stays a temporary 4 s before its rename (petseg_with_faults.py's slow save): the save is
# still going on when the second signal lands, however fast the disk. Other files are written at once.
SLOW_SAVE = ["--slow-save", "last.pth:4"]


@pytest.mark.slow
def test_two_sigints_while_torch_save_writes_last_pth_keep_the_finished_epoch(dataset, tmp_path):
    process = start_cli("train", *UNET_TINY, "--data-dir", str(dataset), "--name", "cut", cwd=tmp_path, faults=SLOW_SAVE)
    run = tmp_path / "runs" / "cut"
    wait_for(lambda: bool(temporaries(run, "last.pth")), process)  # epoch 1's last.pth is being written
    process.send_signal(signal.SIGINT)
    said = read_until(process, "SIGINT received: stopping once epoch 1 is saved")  # handled, still saving
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=600)
    stderr = said + rest
    assert "SIGINT received again: stopping once epoch 1 is saved (the save is not cut short)" in stderr
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "enforce fail" not in stderr, stderr
    assert "once epoch 1 is saved" in stderr
    assert "the run keeps epoch 1" in stderr
    assert not temporaries(run, "last.pth") and not temporaries(run, "history.json")
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1]
    assert history["summary"]["stop_reason"] == "interrupted"
    last = torch.load(run / "last.pth", weights_only=True)  # whole: it loads
    assert last["epoch"] == 1 and last["optimizer"] is not None
    assert (run / "best.pth").is_file()

    resumed = invoke_cli("train", "--resume", str(run), "-e", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} after epoch 1" in resumed.stderr
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [1, 2]


@pytest.mark.slow
def test_sigint_before_any_epoch_finished_says_nothing_is_kept(dataset, tmp_path):
    process = start_cli("train", *UNET_TINY, "--data-dir", str(dataset), "--name", "early", cwd=tmp_path)
    run = tmp_path / "runs" / "early"
    wait_for(lambda: (run / "history.json").is_file(), process)  # the run exists; its first epoch has not finished
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "saving the last finished epoch" not in stderr
    assert "no epoch has finished" in stderr
    assert json.loads((run / "history.json").read_text())["epochs"] == []

    resumed = invoke_cli("train", "--resume", str(run), "-e", "1", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 0" not in resumed.stderr and "training it from the beginning" in resumed.stderr


def test_the_stop_message_clears_the_progress_bar_first(monkeypatch):
    import os

    from tqdm import tqdm

    from petseg_cli.train import announce

    leader, follower = os.openpty()  # a terminal, as the user's
    terminal = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    with tqdm(total=10, file=terminal, disable=False, desc="epoch 1/2") as bar:
        bar.update(3)
        bar.set_postfix(loss="0.6660")
        terminal.flush()
        announce("SIGINT received: stopping at the next batch")
    terminal.flush()
    text = os.read(leader, 65536).decode()
    terminal.close()
    os.close(leader)
    before = text[: text.index("warning: SIGINT received")]
    assert before.endswith(("\r\x1b[2K", "\n")), repr(text)  # on a line of its own, never after "loss=0.6660]"
