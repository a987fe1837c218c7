"""Schedules are not cut short by chance: the default recipe (Schedule-Free AdamW, constant) has no early
stopping, --patience still stops (warning that it cuts an annealing schedule, cosine or onecycle), and the
seed recipe's plateau keeps its stop."""

from __future__ import annotations

from petseg_cli.train.optim import early_stop_warning
from petseg_cli.config.settings import DEFAULTS, load_settings
from petseg_cli.train.progress import Progress


def epochs(*dice):
    progress = Progress()
    for number, value in enumerate(dice, start=1):
        progress.record({"epoch": number, "val_dice": value})
    return progress


def test_the_default_recipe_has_no_early_stopping_and_the_seed_recipe_keeps_its_stop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default, seed = load_settings().train, load_settings(overrides={"train": {"recipe": "seed"}}).train
    assert (default.optimizer, default.scheduler, default.patience) == ("schedulefree-adamw", "constant", 0) and DEFAULTS.train.patience == 0
    assert (seed.scheduler, seed.patience) == ("plateau", 5)
    unet = load_settings(overrides={"model": {"name": "unet"}}).train  # unet's default is the seed's knobs
    assert (unet.scheduler, unet.patience) == ("plateau", 5)


def test_patience_zero_never_stops_and_best_is_still_the_best_epoch():
    progress = epochs(0.5, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6)
    assert not progress.stops_early(0)
    assert (progress.best_epoch, progress.best_val_dice, progress.bad_epochs) == (2, 0.7, 8)
    assert progress.stops_early(8) and not progress.stops_early(9)


def test_patience_with_a_per_batch_schedule_warns_that_it_cuts_the_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cosine = load_settings(overrides={"train": {"patience": 3, "optimizer": "adamw", "scheduler": "cosine"}}).train
    assert "--patience 3" in early_stop_warning(cosine) and "cosine schedule while it is still annealing" in early_stop_warning(cosine)
    onecycle = load_settings(overrides={"train": {"patience": 3, "optimizer": "adamw", "scheduler": "onecycle", "warmup_epochs": 0}}).train
    assert "onecycle schedule" in early_stop_warning(onecycle)
    assert early_stop_warning(load_settings().train) is None  # off: nothing to warn about
    assert early_stop_warning(load_settings(overrides={"train": {"patience": 3}}).train) is None  # constant: nothing annealing
    assert early_stop_warning(load_settings(overrides={"train": {"recipe": "seed"}}).train) is None  # plateau
