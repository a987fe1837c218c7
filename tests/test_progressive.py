"""Progressive resizing (``--image-size START:END``, ``--size-schedule``): the schedule's spelling, the size
each epoch trains at, validation at the final size, BatchNorm statistics re-estimated at it, a resumed
run at the right size, and the run's size being the final one (what infer uses)."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from conftest import invoke_cli, run_cli
from petseg_cli.base.errors import UsageError
from petseg_cli.models.size_schedule import SizeSchedule, parse_size_schedule
from petseg_cli.config.settings import load_settings
from petseg_cli.train.validation import validate_settings

SMALL = ["--limit", "8", "--batch-size", "4", "--precision", "fp32", "--workers", "0"]


def sizes_per_epoch(schedule: str, epochs: int) -> list[int]:
    parsed = parse_size_schedule(schedule)
    return [parsed.size_at(epoch, epochs) for epoch in range(1, epochs + 1)]


def test_start_end_means_the_start_size_for_half_the_epochs_the_middle_one_then_the_end_size_for_the_last_30_percent():
    assert parse_size_schedule("128:256") == SizeSchedule((128, 192, 256), (0.0, 0.5, 0.7))
    assert sizes_per_epoch("128:256", 10) == [128] * 5 + [192] * 2 + [256] * 3
    assert parse_size_schedule("32:64") == SizeSchedule((32, 64), (0.0, 0.7))  # no size between them
    assert parse_size_schedule("") is None


def test_a_schedule_by_hand_starts_each_size_at_its_fraction_and_the_last_epoch_is_always_at_the_final_size():
    assert sizes_per_epoch("128@0,192@0.4,256@0.7", 10) == [128] * 4 + [192] * 3 + [256] * 3
    assert sizes_per_epoch("32@0,64@0.9", 3) == [32, 32, 64]  # 0.9 of 3 epochs is never reached: the last epoch still is
    schedule = parse_size_schedule("32@0,64@0.5,96@0.7")
    assert schedule.size_at(2, 10, floor=64) == 64  # never smaller than the epoch before (a re-planned budget)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "128:250"], "--image-size must be a positive multiple of 32, got 250"),
        (["--image-size", "256:128"], "(got '256:128': START:END must grow"),
        (["--image-size", "big"], "--image-size expects a size in pixels (a multiple of 32) or START:END, e.g. 256 or 128:256 (got 'big')"),
        (["--size-schedule", "64@0.1,128@0.5"], "(got '64@0.1,128@0.5': the first size must start at 0)"),
        (["--size-schedule", "128@0,64@0.5"], "sizes and fractions must both grow"),
        (["--size-schedule", "64@0,128@1.5"], "a size's start must be a fraction of the run"),
        (["--size-schedule", "64,128"], "--size-schedule expects SIZE@FRACTION phases separated by commas, or START:END, e.g. 128@0,192@0.4,256@0.7"),
        (["--size-schedule", "64@0,100@0.5"], "--size-schedule must be a positive multiple of 32, got 100"),
        (["--image-size", "64", "--size-schedule", "32@0,64@0.5"], "give --image-size or --size-schedule, not both"),
    ],
)
def test_a_bad_size_schedule_is_one_line_and_exit_2(tmp_path, flags, message):
    result = invoke_cli("train", "--data-dir", str(tmp_path / "none"), *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_petseg_toml_s_schedule_sets_the_run_s_image_size_to_its_last_size():
    settings = validate_settings(load_settings(overrides={"data": {"size_schedule": "64@0,96@0.5,128@0.8"}}))
    assert settings.data.image_size == 128
    with pytest.raises(UsageError, match="--size-schedule expects .* 'x' is not a size"):
        validate_settings(load_settings(overrides={"data": {"size_schedule": "x@0"}}))


def test_each_epoch_trains_at_its_size_and_validates_at_the_final_one(dataset, tmp_path):
    """Built as train builds them: the loaders of each epoch, and the BatchNorm statistics re-estimated at
    the final size, compared with a recomputation of the first BatchNorm's input means."""
    from petseg_cli.machine.distributed import Context
    from petseg_cli.train.loaders import load_data
    from petseg_cli.train.machine import prepare_machine
    from petseg_cli.train.progress import Progress
    from petseg_cli.train.setup import Training
    from petseg_cli.train.sizes import Resizing

    settings = validate_settings(load_settings(overrides={
        "data": {"data_dir": str(dataset), "size_schedule": "32:64", "limit": 8},
        "train": {"epochs": 4, "batch_size": 4, "precision": "fp32", "workers": 0, "compile": False},
    }))
    machine = prepare_machine(settings, torch.device("cpu"), Context.from_env())
    training = Training(settings, tmp_path, machine, load_data(settings, dataset), pretrained=False)
    resizing = Resizing.of(training, Progress())
    seen = []
    for epoch in range(1, 5):
        resizing.start(epoch)
        seen.append(next(iter(training.train_loader))[0].shape[-1])
    assert seen == [32, 32, 32, 64]
    assert {images.shape[-1] for images, _ in training.val_loader} == {64}
    assert resizing.reestimates(4, last=4)

    bn = training.encoder.bn1  # the first BatchNorm: its input is conv1's output
    before = bn.running_mean.clone()
    resizing.reestimate(4)
    means = []
    with torch.no_grad():
        for images, masks in resizing.final_loader:  # the same epoch: the same order and augmentation
            means.append(training.encoder.conv1(training.to_device(images, masks)[0]).mean(dim=(0, 2, 3)))
    expected = torch.stack(means).mean(0)
    assert not torch.allclose(before, bn.running_mean)
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # two trainings and a start-up of its own (for the kill): about a minute on 2 idle cores
def test_a_run_resumed_mid_schedule_goes_on_at_the_size_of_its_epoch_and_infer_uses_the_final_size(dataset, tmp_path):
    run = tmp_path / "runs" / "grow"
    common = ["--data-dir", str(dataset), "--runs-dir", str(tmp_path / "runs"), *SMALL]
    killed = run_cli("train", "--name", "grow", "--size-schedule", "32@0,64@0.3", "-e", "3", "--keep-optimizer", *common,
                     cwd=tmp_path, faults=["--kill-at", "2"])  # killed as epoch 2 (at 64 px) begins
    assert killed.returncode != 0 and [e["train_size"] for e in json.loads((run / "history.json").read_text())["epochs"]] == [32]
    resumed = invoke_cli("train", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((run / "history.json").read_text())
    assert [e["train_size"] for e in history["epochs"]] == sizes_per_epoch("32@0,64@0.3", 3) == [32, 64, 64]
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["data"]["image_size"] == 64 and config["data"]["size_schedule"] == "32@0,64@0.3"
    assert torch.load(run / "best.pth", weights_only=True)["image_size"] == 64

    photo = next((dataset / "images").glob("*.jpg"))
    inferred = invoke_cli("infer", str(photo), "--run", str(run), "-o", str(tmp_path / "masks"), cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr
    compared = invoke_cli("compare", str(run), "--format", "csv", cwd=tmp_path)
    assert "size_schedule" in compared.stdout.splitlines()[0] and "32@0,64@0.3" in compared.stdout
    table = invoke_cli("compare", str(run), "--columns", "run,image_size", cwd=tmp_path)
    assert "32:64" in table.stdout


def test_a_time_budget_plans_the_epochs_that_fit_at_what_each_size_costs():
    from petseg_cli.train.clock import RunClock

    timer = iter([1000.0] * 10).__next__
    uniform = RunClock(50, 10.0, budget=100.0, timer=timer)
    assert uniform.plan(0, most=50) == 10  # 10 full-size epochs of 10 s
    progressive = RunClock(50, 10.0, budget=100.0, timer=timer)
    progressive.cost = lambda epoch, last: 0.25 if epoch <= last // 2 else 1.0  # the first half at half the size
    assert progressive.plan(0, most=50) == 16  # 8 x 2.5 s + 8 x 10 s = 100 s; 17 epochs would take 110 s


def test_a_progressive_plan_takes_its_pace_from_the_epochs_times_not_from_the_start_up():
    from petseg_cli.train.clock import RunClock

    now = [1000.0]
    clock = RunClock(50, 10.0, budget=100.0, timer=lambda: now[0])
    clock.cost = lambda epoch, last: 0.25 if epoch <= last // 2 else 1.0
    now[0] += 50.0  # 50 s of start-up (data, timed steps): counted as used, not as the epochs' pace
    clock.begin_epochs()
    now[0] += 5.0  # then the first epoch: 5 s at a quarter of the cost
    clock.epoch_done(5.0, 0.25)
    # 20 s per full-size epoch; 47 s left: epochs 2 (0.25), 3 and 4 (1.0 each) take 45 s
    assert clock.plan(1, most=50) == 4
