"""Fault injection: SIGKILL a training at several moments (mid-epoch, while a checkpoint is being
written), resume it, and check that it ends exactly like a run that was never killed."""

import json
import signal
import time
import tomllib

import pytest
import torch

from conftest import invoke_cli, start_cli

pytestmark = pytest.mark.slow  # several processes / injected faults

# fp32: runs compared with each other must not each measure precision auto (a busy machine can decide either way)
TINY = ["--image-size", "32", "-b", "4", "-e", "3", "--model", "resnet34-unet", "--precision", "fp32"]


def slow(name):
    """Hold ``name``'s temporary file 3 s before its rename (petseg_with_faults.py's slow save)."""
    return ["--slow-save", f"{name}:3"]


def comparable(history):
    return [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in history["epochs"]]


def wait_until(condition, process, limit=300):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before the moment to kill it: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("the moment to kill never came")


def epochs_recorded(run):
    try:
        return len(json.loads((run / "history.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def temporary(run, name):
    return any(p.name.startswith(f".{name}.") and p.name.endswith(".tmp") for p in run.iterdir()) if run.is_dir() else False


MOMENTS = {
    "mid-epoch": (lambda run: epochs_recorded(run) >= 1, None),
    "writing-last-pth": (lambda run: temporary(run, "last.pth"), slow("last.pth")),
    "writing-first-best-pth": (lambda run: temporary(run, "best.pth"), slow("best.pth")),
}


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("whole")
    result = invoke_cli("train", *TINY, "--data-dir", str(dataset), "--name", "whole", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads((cwd / "runs" / "whole" / "history.json").read_text())


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_matches_uninterrupted(moment, uninterrupted, dataset, tmp_path):
    condition, faults = MOMENTS[moment]
    run = tmp_path / "runs" / "killed"
    process = start_cli("train", *TINY, "--data-dir", str(dataset), "--name", "killed", cwd=tmp_path, faults=faults)
    wait_until(lambda: condition(run), process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    resumed = invoke_cli("train", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((run / "history.json").read_text())
    assert comparable(final) == comparable(uninterrupted)
    assert final["summary"]["stop_reason"] == "completed"

    # Every file in the run loads, and no temporary file is left behind.
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "config.toml", "history.json", "last.pth"]
    tomllib.loads((run / "config.toml").read_text())
    for checkpoint in ("best.pth", "last.pth"):
        assert "state_dict" in torch.load(run / checkpoint, weights_only=True)
