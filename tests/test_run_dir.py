"""The run directory as one object (petseg_cli.run): the training lock, evaluations named by the data set
they scored, thresholds used only for what they were tuned for. (That a command parses config.toml once is
checked where infer, evaluate and export already run: the ``config_reads`` fixture.)"""

import json
import socket
import time

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli, start_cli
from run_files import copy_run, petseg_in_a_fresh_process
from synthetic import make_dataset, photo

from petseg_cli.run import Run, RunBusyError, TrainingLock, check_not_training, write_config, write_history
from petseg_cli.config.settings import Settings


# -- the training lock ----------------------------------------------------------------------------

def test_a_second_lock_of_a_run_fails_naming_the_holder_and_is_free_once_released(tmp_path):
    first = TrainingLock(tmp_path).acquire()
    with pytest.raises(RunBusyError, match=rf"being trained by process \d+ on host {socket.gethostname()} "):
        TrainingLock(tmp_path).acquire()
    with pytest.raises(RunBusyError, match="being trained by process"):
        check_not_training(tmp_path)
    first.release()
    check_not_training(tmp_path)  # free again: no error
    with TrainingLock(tmp_path):
        pass
    assert not (tmp_path / ".training.json").exists() and not (tmp_path / ".training.lock").exists()  # no file left


def unet_run(runs_dir, data_dir, name="busy"):
    """A run that can train (no epoch finished yet): unet, 32 px, on ``data_dir``."""
    settings = Settings()
    settings.model.name, settings.data.image_size, settings.data.data_dir = "unet", 32, str(data_dir)
    settings.train.batch_size, settings.train.epochs, settings.train.precision = 4, 1, "fp32"
    settings.train.compile, settings.train.workers, settings.train.keep_optimizer = False, 0, True  # one save of last.pth
    run = runs_dir / name
    run.mkdir(parents=True)
    write_config(run, settings, {"dataset_path": str(data_dir)})
    write_history(run, [], None)
    return run


HEAVY = ("torch", "numpy")  # what a second trainer must fail without importing


def temporaries(run, name):
    return [p for p in run.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


@pytest.mark.slow
def test_two_trainings_of_one_run_the_second_fails_at_once_and_the_first_keeps_its_files(dataset, tmp_path):
    run = unet_run(tmp_path / "runs", dataset)
    # last.pth stays a temporary for 5 s (petseg_with_faults.py's slow save): the first holds the run mid-save.
    first = start_cli("train", "--resume", str(run), cwd=tmp_path, faults=["--slow-save", "last.pth:5"])
    try:
        deadline = time.monotonic() + 300
        while not temporaries(run, "last.pth"):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # At once: before it imports torch or numpy (about 1.2 s in all on this 2-core machine under load;
        # a bound on the clock itself would fail whenever the machine is busier).
        exit_code, imported, stderr = petseg_in_a_fresh_process(["train", "--resume", str(run)], tmp_path, HEAVY)
        assert temporaries(run, "last.pth"), "the second start-up deleted the first's save in progress"
    finally:
        _, first_stderr = first.communicate(timeout=300)
    assert exit_code != 0 and imported == []
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"is being trained by process {first.pid} on host {socket.gethostname()}" in lines[0]
    assert first.returncode == 0, first_stderr
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1] and history["summary"]["stop_reason"] == "completed"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    Run.open(run).load_model("last")  # whole: it loads
    assert not (run / ".training.json").exists() and not (run / ".training.lock").exists()


# -- evaluations by data set ----------------------------------------------------------------------

def compare_json(run, cwd, *args):
    result = invoke_cli("compare", str(run), "--format", "json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


@pytest.mark.slow
def test_scoring_another_data_set_never_replaces_the_runs_own_test_figure(tiny_run, dataset, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    other = make_dataset(tmp_path / "other-pets", n_trainval=2, n_test=4, seed=7)
    assert invoke_cli("evaluate", str(run), cwd=tmp_path).returncode == 0
    own = compare_json(run, tmp_path)
    assert own["test_dice"] is not None and own["test_data"] == dataset.name

    scored = invoke_cli("evaluate", str(run), "--data-dir", str(other), cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    (other_json,) = run.glob("eval-test-best-original-on-other-pets-*.json")
    other_record = json.loads(other_json.read_text())
    assert other_record["images"] == 4 and other_record["data"]["directory"] == str(other.resolve())
    assert not other_record["data"]["own"] and other_record["dice"] != own["test_dice"]
    assert json.loads((run / "eval-test-best-original.json").read_text())["images"] == 10  # untouched

    assert compare_json(run, tmp_path) == own  # compare RUN: the run's own figure, unchanged
    shown = compare_json(run, tmp_path, "--data", "other-pets")
    assert shown["test_dice"] == other_record["dice"] and shown["test_data"] == other_record["data"]["key"]
    table = invoke_cli("compare", str(run), "--data", "other-pets", cwd=tmp_path)
    assert "on the data set other-pets" in " ".join(table.stdout.split())
    assert "each run's own data set" in " ".join(invoke_cli("compare", str(run), cwd=tmp_path).stdout.split())


# -- thresholds by what they were tuned for -------------------------------------------------------

def test_a_threshold_record_is_used_only_for_its_weights_and_tta(tmp_path):
    from petseg_cli.run.thresholds import choose_threshold, write_threshold

    assert choose_threshold(tmp_path, "best", False).value == 0.5
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.4, "val_dice": 0.9}))  # before records said
    assert choose_threshold(tmp_path, "best", False).value == 0.4  # tuned for best, no TTA: all there was then
    write_threshold(tmp_path, {"threshold": 0.3, "weights": "best", "tta": True, "at": "original"})
    write_threshold(tmp_path, {"threshold": 0.35, "weights": "best", "tta": True, "at": "original"})  # replaces
    assert choose_threshold(tmp_path, "best", True).value == 0.35
    assert choose_threshold(tmp_path, "best", False).value == 0.4
    last = choose_threshold(tmp_path, "last", False)
    assert last.value == 0.5 and not last.tuned and "not last weights, no TTA" in last.reason


@pytest.mark.slow
def test_infer_uses_a_threshold_tuned_with_tta_only_with_tta(spread_run, tmp_path):
    from petseg_cli.data.masks import pet_mask

    run = copy_run(spread_run, tmp_path / "run")
    Run.open(run).write_threshold({"threshold": 0.2, "weights": "best", "tta": True, "at": "original"})
    Image.fromarray(photo(90, 70, 1)).save(tmp_path / "cat.jpg")

    def infer(*args):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        result = invoke_cli("infer", "cat.jpg", "--run", str(run), "-o", str(out), *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return np.asarray(Image.open(out / "cat.png")), " ".join(result.stderr.split())

    plain, said = infer()
    assert "threshold 0.5 (the default: the tuned one is for best weights, with TTA" in said
    probability = infer("--probs")[0]
    assert np.array_equal(plain, pet_mask(probability, 0.5))
    assert not np.array_equal(plain, pet_mask(probability, 0.2))  # the tuned one would give another mask
    with_tta, said = infer("--tta")
    assert "threshold 0.2 (tuned for best weights, with TTA" in said
    assert np.array_equal(with_tta, pet_mask(infer("--tta", "--probs")[0], 0.2))
