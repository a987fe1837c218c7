"""``petseg train --time``: the budget's spelling, the epochs planned to fit it (driven by a fake clock),
a schedule that ends where the plan does, and a run whose budget leaves room for exactly one epoch."""

from __future__ import annotations

import json
import time
import tomllib

import pytest
import torch
from typer.testing import CliRunner

from petseg_cli.cli.app import app
from petseg_cli.base.errors import UsageError
from petseg_cli.base.formatting import parse_duration
from petseg_cli.train.optim import Horizon, build_scheduler
from petseg_cli.config.settings import load_settings, validate
from petseg_cli.train.clock import RunClock
from tests.synthetic import make_dataset


IMPORTED = time.monotonic()


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_durations_are_spelled_in_seconds_minutes_or_hours():
    assert [parse_duration(s) for s in ("90s", "20m", "1.5h", "45", "", "0", 0)] == [90, 1200, 5400, 45, 0, 0, 0]
    for bad in ("soon", "-5m", "1.5d", "m"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)
    with pytest.raises(UsageError, match=r"--time expects a duration.*e\.g\. 90s.*\(got 'an hour'\)"):
        validate(load_settings(overrides={"train": {"time": "an hour"}}))


def test_the_plan_fits_the_budget_and_is_re_planned_from_the_epochs_as_they_finish():
    timer = FakeTimer()
    clock = RunClock(epochs_left=50, estimated_epoch_seconds=30.0, budget=100.0, timer=timer)
    assert clock.plan(0, most=50) == 3  # 100 s at the estimated 30 s an epoch
    timer.now += 40.0  # the first epoch took 40 s: 60 s are left, one more epoch fits
    clock.epoch_done(40.0)
    assert clock.plan(1, most=50) == 2 and clock.epochs_left == 1
    timer.now += 40.0
    clock.epoch_done(40.0)
    assert clock.plan(2, most=50) == 2  # 20 s left: no third epoch (it would end 20% over)
    assert clock.plan(0, most=1) == 1  # --epochs is the most
    assert clock.record() == {"time_budget_seconds": 100.0, "time_used_seconds": 80.0, "time_planned_epochs": [3, 2, 2, 1]}


def test_the_first_epoch_always_runs_and_a_resumed_run_gets_the_rest_of_its_budget():
    timer = FakeTimer()
    assert RunClock(10, 500.0, budget=60.0, timer=timer).plan(0, most=10) == 1
    resumed = RunClock(8, 10.0, budget=60.0, used_before=35.0, timer=timer)  # 25 s left of 60: two epochs of 10 s
    assert resumed.plan(2, most=10) == 4
    assert RunClock(8, 10.0, budget=60.0, used_before=60.0, timer=timer).plan(2, most=10) == 2  # none left: stop


def test_during_an_epoch_the_plan_follows_the_pace_so_far():
    timer = FakeTimer()
    clock = RunClock(epochs_left=50, estimated_epoch_seconds=10.0, budget=100.0, timer=timer)
    assert clock.plan(0, most=50) == 10
    timer.now += 30.0  # half the first epoch's training took 30 s: 60 s an epoch, 70 s left
    assert clock.plan(0, most=50, partial=0.5) == 1  # 0.5 + 72 / 60 epochs: this one only
    timer.now += 60.0  # far slower still: the epoch begun finishes anyway
    assert clock.plan(0, most=50, partial=0.9) == 1
    assert clock.estimates == [10] and clock.epochs_left == 10  # plans during an epoch are not kept


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_a_re_planned_schedule_reaches_its_end_value_at_the_planned_end(scheduler):
    t = load_settings(overrides={"train": {"scheduler": scheduler, "warmup_epochs": 1}}).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    horizon = Horizon(epochs=10, steps_per_epoch=4)
    schedule = build_scheduler(optimizer, t, horizon)
    for epoch, planned in enumerate([10, 6, 5, 5, 5], start=1):  # the plan shrinks after epochs 1 and 2
        horizon.epochs = planned
        for _ in range(4):
            optimizer.step()
            schedule.step()
        if epoch < 5:
            assert optimizer.param_groups[0]["lr"] > 0.01
    end = 0.0 if scheduler == "cosine" else 1 / 25 / 1e4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(end, abs=1e-12)


@pytest.mark.slow
def test_a_budget_smaller_than_an_epoch_runs_exactly_one_with_the_whole_schedule(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "pets", n_trainval=12, n_test=4, size=(40, 40))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--image-size", "32", "-b", "4", "-e", "5", "--time", "0.01s", "--keep-optimizer", "--optimizer", "adamw",
            "--scheduler", "cosine", "--data-dir", str(data), "--runs-dir", "runs", "--name", "budget"]
    result = CliRunner().invoke(app, args)
    run = tmp_path / "runs" / "budget"
    assert result.exit_code == 0, result.stdout + result.stderr
    history = json.loads((run / "history.json").read_text())
    summary = history["summary"]
    assert summary["stop_reason"] == "time_up" and summary["epochs_run"] == 1
    assert summary["time_budget_seconds"] == 0.01 and summary["time_planned_epochs"] == [1, 1]
    assert summary["time_used_seconds"] >= history["epochs"][0]["time_used"] > 0  # the final save counts too
    facts = tomllib.loads((run / "config.toml").read_text())["run"]
    assert facts["time_budget_seconds"] == 0.01 and facts["time_estimated_epochs"] == 1
    last = torch.load(run / "last.pth", weights_only=False)
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.0  # the cosine schedule ended with the one epoch

    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 2 and "--time larger than" in result.stdout + result.stderr


@pytest.mark.parametrize(("description", "done", "total", "elapsed"), [("epoch 3/50", 12, 30, 5.0), ("epoch 100/100", 9999, 9999, 5000.0)])
def test_the_progress_bar_shows_the_time_left_in_80_columns(description, done, total, elapsed):
    from petseg_cli.train.bar import postfix, rendered

    line = rendered(description, done, total, elapsed, postfix("12:34:56", 1.23456, 1234.5), columns=80)
    assert len(line) <= 80 and "left 12:34:56" in line, line
    assert line.startswith(description) and f"{done}/{total}" in line


def test_a_resumed_run_counts_the_time_its_epochs_used():
    from petseg_cli.train.command import used_before
    from petseg_cli.train.progress import Progress

    budgeted = Progress([{"epoch": 1, "seconds": 9.0, "time_used": 12.5}, {"epoch": 2, "seconds": 9.0, "time_used": 23.0}])
    assert used_before(budgeted) == 23.0  # the last epoch's count, timed steps and saves included
    unbudgeted = Progress([{"epoch": 1, "seconds": 9.0}, {"epoch": 2, "seconds": 8.0}])
    assert used_before(unbudgeted) == 17.0 and used_before(Progress()) == 0.0


def test_one_off_work_in_an_epoch_counts_as_used_but_not_in_the_pace():
    """A compiled model's first calls (one_off) are spent from the budget, not planned again each epoch."""
    timer, compiling = FakeTimer(), [0.0]
    clock = RunClock(epochs_left=50, estimated_epoch_seconds=10.0, budget=100.0, timer=timer, one_off=lambda: compiling[0])
    timer.now += 40.0  # the first epoch: 30 s of compiling, 10 s of steps
    compiling[0] = 30.0
    clock.epoch_done(40.0)
    assert clock.pace() == 10.0 and clock.finished == [10.0]
    assert clock.plan(1, most=50) == 7  # 62 s left at 10 s an epoch: 6 more


def test_the_budget_counts_from_the_process_start_and_warns_when_one_epoch_cannot_fit():
    from petseg_cli.train.clock import process_start

    timer = FakeTimer()
    clock = RunClock(epochs_left=5, estimated_epoch_seconds=30.0, budget=60.0, timer=timer, started=timer.now - 45.0)
    assert clock.used() == 45.0  # start-up before the clock was made counts
    assert clock.first_epoch_overruns(0)  # 30 s an epoch, 15 s (+5%) left
    assert not RunClock(5, 30.0, budget=60.0, timer=timer).first_epoch_overruns(0)
    # This process started before it imported this module (the fallback, "now", would be after).
    assert process_start() < IMPORTED


@pytest.mark.parametrize("resumed_with", ["20m", "0", ""])
def test_a_run_that_used_its_budget_resumes_without_one(tmp_path, resumed_with):
    """--time 0 and "" mean no budget: a time_up run resumed with either trains on to --epochs."""
    from petseg_cli.run import write_config
    from petseg_cli.train.resume import why_finished

    write_config(tmp_path, load_settings(overrides={"train": {"time": "20m", "epochs": 50}}), {})
    summary = {"stop_reason": "time_up", "time_used_seconds": 1200.0, "optimizer_kept": True}
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [], "summary": summary}))
    reason = why_finished(tmp_path, load_settings(overrides={"train": {"time": resumed_with, "epochs": 50}}))
    if resumed_with == "20m":
        assert "used its time budget" in reason and "--time larger than 0:20:00" in reason and "--time 0" in reason
    else:
        assert reason is None
