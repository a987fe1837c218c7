import pytest
import json
import signal
import subprocess
import sys
import time
import tomllib

import torch

from conftest import REPO, invoke_cli, start_cli
from petseg_cli.config.settings import load_settings
from petseg_cli.train import DIVERGED, train

EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s", "train_size"}
SUMMARY_KEYS = {"optimizer_kept", "best_epoch", "best_val_dice", "total_seconds", "stop_reason", "epochs_run", "parameters",
                "weights"}
# fp32: runs compared with each other must not each measure precision auto (a busy machine can decide either way)
SIZE = 32  # the smallest size the models take: a quarter of 64 px's arithmetic
TINY = ["--image-size", str(SIZE), "-b", "4", "--model", "resnet34-unet", "--precision", "fp32"]


def tiny_settings(dataset, runs_dir, **train):
    return load_settings(
        overrides={
            "data": {"data_dir": str(dataset), "image_size": SIZE},
            "train": {"batch_size": 4, "runs_dir": str(runs_dir), "precision": "fp32", **train},
        }
    )


def comparable(history):
    """The history without wall-clock figures."""
    return [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in history["epochs"]]


@pytest.mark.slow
def test_tiny_training_writes_the_three_files_with_documented_keys(dataset, tmp_path):
    result = invoke_cli("train", *TINY, "-e", "2", "--data-dir", str(dataset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "resnet34-unet-bs4"
    assert {"config.toml", "best.pth", "last.pth", "history.json"} <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(set(e) == EPOCH_KEYS for e in history["epochs"])
    assert set(history["summary"]) == SUMMARY_KEYS
    assert history["summary"]["stop_reason"] == "completed"
    assert history["summary"]["parameters"] == 22_939_246
    assert "val_dice" in result.stdout and "epoch   2/2" in result.stdout

    config = tomllib.loads((run / "config.toml").read_text())
    assert config["model"] == {"name": "resnet34-unet", "cbam": True, "encoder_weights": "none"}
    assert config["train"]["epochs"] == 2 and config["data"]["image_size"] == SIZE
    assert config["run"]["images"] == {"train": 18, "val": 2}
    assert config["run"]["torch_version"] == torch.__version__ and config["run"]["device"] == "cpu"

    best = torch.load(run / "best.pth", weights_only=True)
    assert best["model"] == "resnet34-unet" and best["model_args"] == {"cbam": True}
    assert best["epoch"] == history["summary"]["best_epoch"]
    assert best["val_dice"] == history["summary"]["best_val_dice"]
    last = torch.load(run / "last.pth", weights_only=True)
    assert {"state_dict", "early_stopping", "rng", "epoch"} <= set(last) and last["epoch"] == 2
    assert last["optimizer"] is None and history["summary"]["optimizer_kept"] is False  # finished: weights only
    assert best["format"] == last["format"] == 2 and best["weights"] == last["weights"] == history["summary"]["weights"] == "raw"
    assert "raw_state_dict" not in last  # without an EMA the validated weights are the raw ones
    assert f"completed: best val_dice {history['summary']['best_val_dice']:.4f} at epoch" in result.stderr
    assert "last.pth now holds the weights only" in result.stderr

    again = invoke_cli("train", *TINY, "-e", "1", "--data-dir", str(dataset), cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "runs" / "resnet34-unet-bs4-2").is_dir()


def test_a_finished_runs_last_epoch_writes_last_pth_once_without_the_optimiser(dataset, tmp_path, monkeypatch):
    """The configured last epoch needs no optimiser state (the run ends there): its last.pth is written
    once, weights only, not whole and then again without the optimiser. Epochs before it keep theirs (a
    killed run resumes from them), and --keep-optimizer keeps it at the end too. The first run is in bf16
    (forced, on any CPU), the second in fp32: a checkpoint holds the same things in both."""
    saves = []
    real_save = torch.save

    def counting_save(obj, f, *args, **kwargs):
        name = "last" if "history" in obj else "best"  # what last.pth holds beside the weights (run/checkpoint.py)
        saves.append((name, obj.get("epoch"), obj.get("optimizer") is not None))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", counting_save)
    result = train(tiny_settings(dataset, tmp_path / "a", epochs=2, precision="bf16"))
    last_saves = [(epoch, optimizer) for name, epoch, optimizer in saves if name == "last"]
    assert last_saves == [(1, True), (2, False)]  # before: (1, True), (2, True), (2, False)
    assert torch.load(result.run_dir / "last.pth", weights_only=True)["optimizer"] is None
    assert json.loads((result.run_dir / "history.json").read_text())["summary"]["optimizer_kept"] is False

    saves.clear()
    kept = train(tiny_settings(dataset, tmp_path / "b", epochs=1, keep_optimizer=True))
    assert [(epoch, optimizer) for name, epoch, optimizer in saves if name == "last"] == [(1, True)]
    assert torch.load(kept.run_dir / "last.pth", weights_only=True)["optimizer"] is not None


@pytest.mark.slow
def test_with_an_ema_best_and_last_hold_the_validated_averaged_weights(dataset, tmp_path):
    """last.pth's state_dict is what validation scored (evaluate/export --weights last use it); the raw
    weights a resume needs sit beside it, with the EMA's update count."""
    result = train(tiny_settings(dataset, tmp_path, epochs=2, ema=0.9, keep_optimizer=True, optimizer="adamw", scheduler="cosine"))
    history = json.loads((result.run_dir / "history.json").read_text())
    best = torch.load(result.run_dir / "best.pth", weights_only=True)
    last = torch.load(result.run_dir / "last.pth", weights_only=True)
    assert result.weights == history["summary"]["weights"] == best["weights"] == last["weights"] == "ema"
    assert last["ema_updates"] == 2 * 5  # 18 train images in batches of 4, two epochs
    assert any(not torch.equal(last["state_dict"][k], last["raw_state_dict"][k]) for k in last["state_dict"])
    if history["summary"]["best_epoch"] == 2:
        assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])


@pytest.mark.slow
def test_same_seed_same_history(dataset, tmp_path):
    first = train(tiny_settings(dataset, tmp_path / "a", epochs=2))
    second = train(tiny_settings(dataset, tmp_path / "b", epochs=2))
    h1 = json.loads((first.run_dir / "history.json").read_text())
    h2 = json.loads((second.run_dir / "history.json").read_text())
    assert comparable(h1) == comparable(h2)
    other_seed = train(tiny_settings(dataset, tmp_path / "c", epochs=1, seed=1))
    h3 = json.loads((other_seed.run_dir / "history.json").read_text())
    assert comparable(h3)[0]["train_loss"] != comparable(h1)[0]["train_loss"]


def wait_for_epochs(path, count, process, limit=300):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(json.loads(path.read_text())["epochs"]) >= count:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError("training did not reach the expected epoch")


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted(dataset, tmp_path):
    args = ["train", *TINY, "-e", "4", "--data-dir", str(dataset)]
    reference = invoke_cli(*args, "--name", "whole", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    process = start_cli(*args, "--name", "cut", cwd=tmp_path)
    run = tmp_path / "runs" / "cut"
    wait_for_epochs(run / "history.json", 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    interrupted = json.loads((run / "history.json").read_text())
    assert interrupted["summary"]["stop_reason"] == "interrupted"
    assert len(interrupted["epochs"]) < 4
    assert "petseg train --resume" in stderr

    resumed = invoke_cli("train", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = json.loads((tmp_path / "runs" / "whole" / "history.json").read_text())
    final = json.loads((run / "history.json").read_text())
    assert comparable(final) == comparable(whole)
    assert final["summary"]["stop_reason"] == "completed"

    finished = invoke_cli("train", "--resume", str(run), cwd=tmp_path)
    assert finished.returncode == 2 and "cannot be resumed" in finished.stderr
    assert "optimiser state was dropped" in finished.stderr and "--keep-optimizer" in finished.stderr


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(dataset, tmp_path):
    process = start_cli("train", *TINY, "-e", "20", "--data-dir", str(dataset), "--name", "t", cwd=tmp_path)
    wait_for_epochs(tmp_path / "runs" / "t" / "history.json", 1, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    assert process.returncode == 130
    assert json.loads((tmp_path / "runs" / "t" / "history.json").read_text())["summary"]["stop_reason"] == "interrupted"


@pytest.mark.slow
def test_nan_loss_stops_as_diverged(dataset, tmp_path):
    # An absurd learning rate makes the un-normalised U-Net overflow after its first step.
    settings = tiny_settings(dataset, tmp_path, epochs=3, learning_rate=1e10)
    settings.model.name = "unet"
    result = train(settings)
    assert result.stop_reason == DIVERGED and result.exit_code == 1
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history["summary"]["stop_reason"] == "diverged"


def test_missing_data_dir_says_how_to_download(tmp_path):
    result = invoke_cli("train", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode != 0
    assert "petseg download" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_help_lists_all_commands_without_importing_torch_albumentations_or_rich():
    code = (
        "import sys, runpy; sys.argv = ['petseg', '--help']\n"
        "try:\n    runpy.run_module('petseg_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'albumentations', 'matplotlib', 'rich') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    for command in ("download", "train", "evaluate", "infer", "compare", "summary"):
        assert command in result.stdout
    assert result.stdout.strip().endswith("[]"), result.stdout[-300:]


def test_version():
    result = subprocess.run([sys.executable, "-m", "petseg_cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.startswith("petseg ")
