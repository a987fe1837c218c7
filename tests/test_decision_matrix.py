"""The branches that petseg's "auto" decisions open, forced on any machine: the training features (a
time budget, a size schedule, a logger, resume; the default optimiser, Schedule-Free AdamW, compiled; EMA
and SAM with AdamW in bf16) with compile forced on and with bf16 forced on.
Their default runs (auto, which on most CPUs here means eager and fp32) are in test_time_budget.py,
test_progressive.py, test_ema.py, test_trackers.py and test_resume_rules.py.

The compiled runs use torch's aot_eager backend (TORCH_COMPILE_OVERRIDE_BACKENDS): dynamo captures the
graphs, AOTAutograd traces forward and backward, and they run without inductor's generated kernels, which
test_compile.py builds once; a cold inductor compilation per test would cost minutes here."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from conftest import run_cli
from synthetic import make_dataset

pytest.importorskip("tensorboard")

AOT_EAGER = {"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager", "OMP_NUM_THREADS": "1"}
SCHEDULE_FREE = ["--optimizer", "schedulefree-adamw", "--scheduler", "constant"]  # the default recipe's (unet's is the seed's)
ADAMW_EMA = ["--optimizer", "adamw", "--scheduler", "cosine", "--ema", "0.9"]
# name, flags, environment: one branch of each decision that a default run here does not take. Compiled:
# unet, the smallest graph for dynamo to capture (no BatchNorm, no attention); bf16: resnet34-unet, which
# costs a seventh of unet's arithmetic per image at these sizes.
BRANCHES = [
    ("compiled", ["--model", "unet", "--compile", "--precision", "fp32", *SCHEDULE_FREE], AOT_EAGER),
    ("bf16", ["--model", "resnet34-unet", "--precision", "bf16", "--no-compile", *ADAMW_EMA], {}),
]
# Every feature at once; a budget of an hour is never what stops these epochs, so the outcome does not
# depend on the machine's pace: 2 epochs (32 px, then 64 px from 70% on), then 1 more after resume.
# Issue 37's knobs that touch the step or the data: a second loss term with smoothing, CutMix and
# copy-paste (from the directory's petseg.toml, as a user sets them), and where the optimiser is AdamW,
# SAM's second pass.
KNOBS = """[train]
loss = "ce+lovasz"
label_smoothing = 0.1
[augment]
cutmix = 0.5
copy_paste = 0.5
"""
SAM = "sam_rho = 0.05\n"
FEATURES = ["-b", "4", "--image-size", "32:64", "--time", "1h", "--logger", "tensorboard", "--keep-optimizer"]


@pytest.mark.slow
@pytest.mark.parametrize(("branch", "flags", "env"), BRANCHES, ids=[b[0] for b in BRANCHES])
def test_time_budget_size_schedule_ema_logger_and_resume_on_each_branch(tmp_path, branch, flags, env):
    # 9 trainval lines: 8 train images (2 whole batches of 4 an epoch) and 1 val image.
    data = make_dataset(tmp_path / "pets", n_trainval=9, n_test=2, size=(64, 64))
    sam = SAM if "adamw" in flags else ""  # SAM wraps adam or adamw
    (tmp_path / "petseg.toml").write_text(KNOBS.replace("[augment]", sam + "[augment]"))  # the recipe ablation's knobs, on each branch too
    first = run_cli("train", *FEATURES, *flags, "-e", "2", "--data-dir", str(data), "--name", branch, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    run = tmp_path / "runs" / branch
    config = tomllib.loads((run / "config.toml").read_text())
    assert (config["train"]["loss"], config["train"]["sam_rho"], config["augment"]["cutmix"]) == ("ce+lovasz", 0.05 if sam else 0.0, 0.5)
    facts = config["run"]
    assert facts["time_estimated_epoch_seconds"] > 0 and facts["time_estimated_epochs"] == 2  # a number, never None
    if branch == "compiled":  # with a budget, beside the steps, which wait for each graph (within 20% of an hour)
        assert facts["compile"] is True and facts["compile_reason"].endswith("; in the background (a time budget)")
        for size in (32, 64):  # a new size compiles a graph of its own
            assert f"compiled the training step at {size} px (batch 4) in " in first.stderr
    else:
        assert facts["precision"] == "bf16" and facts["compile"] is False

    # The compiled branch resumes without a budget: compiled in the loop, as an unbudgeted run is.
    budget = "0" if branch == "compiled" else "1h"
    resumed = run_cli("train", "--resume", str(run), "-e", "3", "--time", budget, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} after epoch 2" in resumed.stderr
    if branch == "compiled":
        assert "compiled the training step at 64 px in" in resumed.stderr
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert [e["train_size"] for e in history["epochs"]] == [32, 64, 64]
    assert history["summary"]["stop_reason"] == "completed" and history["summary"]["weights"] == ("ema" if sam else "raw")
    if not sam:  # Schedule-Free AdamW was saved after validating: at its averaged point
        assert torch.load(run / "last.pth", weights_only=True)["optimizer"]["param_groups"][0]["train_mode"] is False
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
