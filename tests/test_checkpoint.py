"""run/checkpoint.py: what last.pth holds records which weights it holds; files from before format 2 still
restore (raw weights in state_dict, torch's AveragedModel under "ema")."""

import torch

from petseg_cli.run.checkpoint import (
    EMA, FORMAT, RAW, TrainingState, last_record, load_checkpoint, save_checkpoint, training_state, weights_record,
)


def state(raw, optimizer=None, updates=0):
    return TrainingState(
        epoch=3, raw=raw, ema=None, ema_updates=updates, optimizer=optimizer, scheduler={"s": 1}, scaler={},
        early_stopping={"best_epoch": 2, "best_val_dice": 0.5, "bad_epochs": 1}, rng={"torch": torch.zeros(2)},
        history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
    )


def test_with_an_ema_last_holds_the_validated_weights_and_the_raw_ones_for_resume(tmp_path):
    raw, averaged = {"w": torch.ones(2)}, {"w": torch.full((2,), 0.5)}
    path = tmp_path / "last.pth"
    save_checkpoint(path, last_record(weights_record("unet", {}, 64, averaged, EMA), state(raw, {"o": 1}, updates=7)))
    saved = load_checkpoint(path)
    assert saved["format"] == FORMAT and saved["weights"] == "ema"
    assert torch.equal(saved["state_dict"]["w"], averaged["w"])  # what evaluate/export --weights last use
    restored = training_state(saved)
    assert torch.equal(restored.raw["w"], raw["w"]) and torch.equal(restored.ema["w"], averaged["w"])
    assert restored.ema_updates == 7 and restored.epoch == 3 and restored.optimizer == {"o": 1}


def test_a_finished_run_s_last_keeps_only_the_validated_weights(tmp_path):
    record = last_record(weights_record("unet", {}, 64, {"w": torch.zeros(2)}, EMA), state({"w": torch.ones(2)}))
    assert "raw_state_dict" not in record and record["optimizer"] is None and record["optimizer_dropped"]


def test_without_an_ema_the_raw_weights_are_stored_once():
    raw = {"w": torch.ones(2)}
    record = last_record(weights_record("unet", {}, 64, raw, RAW), state(raw, {"o": 1}))
    assert "raw_state_dict" not in record and record["weights"] == "raw"
    restored = training_state(record)
    assert restored.raw is raw and restored.ema is None


def test_a_last_pth_from_before_format_2_restores_its_raw_and_averaged_weights():
    old = {
        "model": "unet", "model_args": {}, "image_size": 64, "state_dict": {"w": torch.ones(2)},
        "ema": {"n_averaged": torch.tensor(12), "module.w": torch.full((2,), 0.25)},
        "epoch": 2, "optimizer": {"o": 1}, "scheduler": {}, "scaler": {},
        "early_stopping": {"best_epoch": 2, "best_val_dice": 0.4, "bad_epochs": 0}, "rng": {"torch": torch.zeros(2)},
        "history": [{"epoch": 1}, {"epoch": 2}],
    }
    restored = training_state(old)
    assert torch.equal(restored.raw["w"], torch.ones(2)) and torch.equal(restored.ema["w"], torch.full((2,), 0.25))
    assert restored.ema_updates == 12 and restored.epoch == 2
    without_ema = training_state({**old, "ema": None})
    assert without_ema.ema is None and without_ema.ema_updates == 0
