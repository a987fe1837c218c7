"""A feature of training is a callback the loop calls at its fixed points (train/callbacks.py): one added
from outside, with nothing of the loop changed, is called at every point in order on a real run, and
sees what history.json then records."""

import json

import pytest

from petseg_cli.config.settings import load_settings
from petseg_cli.train import train
from petseg_cli.train.callbacks import EVENTS, Callback
from synthetic import make_dataset


class Recorder(Callback):
    """The points it is called at, in order, and each epoch's val Dice as on_epoch_end saw it."""

    def __init__(self):
        self.events, self.val_dice = [], {}

    def seen(self, event, loop):
        if not self.events or self.events[-1] != event:  # a run of steps (or checks) as one
            self.events.append(event)
        if event == "on_epoch_end":
            self.val_dice[loop.epoch] = loop.record["val_dice"]


for _event in EVENTS:  # a method of its own at every point, as a callback defines the points it acts at
    setattr(Recorder, _event, lambda self, loop, event=_event: self.seen(event, loop))


@pytest.mark.slow  # a real run (1 step, 32 px): about 15 s on 2 busy cores
def test_a_callback_added_from_outside_is_called_at_every_point_in_order(tmp_path):
    data = make_dataset(tmp_path / "pets", n_trainval=4, n_test=1, size=(32, 32))
    settings = load_settings(
        overrides={
            "data": {"data_dir": str(data), "image_size": 32},
            "model": {"name": "resnet34-unet"},
            "train": {"epochs": 1, "batch_size": 2, "runs_dir": str(tmp_path / "runs"), "compile": False,
                      "precision": "fp32"},
        }
    )
    recorder = Recorder()
    result = train(settings, name="r", callbacks=[recorder])
    assert result.stop_reason == "completed"
    steps = [e for e in recorder.events if e in ("on_step_end", "on_check")]
    assert recorder.events == [
        "on_train_start", "on_epoch_start", *steps, "on_validation_start", "on_validation_end", "on_save",
        "on_epoch_end", "on_train_end",
    ]
    assert set(recorder.events) == set(EVENTS)  # every point
    assert steps[:2] == ["on_step_end", "on_check"]  # the loss is read after the first step
    history = json.loads((tmp_path / "runs" / "r" / "history.json").read_text())
    assert recorder.val_dice == {e["epoch"]: e["val_dice"] for e in history["epochs"]}
