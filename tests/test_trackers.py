"""`petseg train --logger tensorboard|mlflow`: what the trackers read back is what the run recorded,
a resumed run continues the same TensorBoard folder and MLflow run without a repeated step, and a
logger whose package is missing is one line naming the extra, before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, invoke_cli

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def tiny_settings(dataset: Path, runs_dir: Path, epochs: int):
    from petseg_cli.config.settings import load_settings

    return load_settings(
        overrides={
            "data": {"data_dir": str(dataset), "image_size": 32, "limit": 8},
            "train": {
                "recipe": "seed", "epochs": epochs, "batch_size": 4, "runs_dir": str(runs_dir), "precision": "fp32",
                "keep_optimizer": True, "loggers": ["tensorboard", "mlflow"],
            },
        }
    )


@pytest.fixture(scope="module")
def logged_run(dataset, tmp_path_factory) -> Path:
    """A run trained 2 epochs with both loggers into the default local MLflow store (<runs_dir>/mlruns)."""
    from petseg_cli.train import train

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return train(tiny_settings(dataset, tmp_path_factory.mktemp("runs"), epochs=2)).run_dir


@pytest.fixture(scope="module")
def resumed_run(logged_run) -> tuple[Path, str]:
    """``logged_run`` resumed to 3 epochs; the MLflow run id it had before."""
    from petseg_cli.run import read_mlflow_run
    from petseg_cli.train import train, train_settings

    run_id = read_mlflow_run(logged_run)["run_id"]
    settings = train_settings(None, {"train": {"epochs": 3}}, resume=logged_run)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        train(settings, resume=logged_run)
    return logged_run, run_id


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in tensorboard_events(run_dir).Scalars(tag)]


def history_of(run_dir: Path, key: str) -> list[tuple[int, float]]:
    from petseg_cli.run.history import read_history

    return [(record["epoch"], record[key]) for record in read_history(run_dir)["epochs"]]


def assert_same(logged: list[tuple[int, float]], recorded: list[tuple[int, float]]) -> None:
    """The same steps, and the same values (TensorBoard keeps float32)."""
    assert [step for step, _ in logged] == [step for step, _ in recorded]
    assert [value for _, value in logged] == pytest.approx([value for _, value in recorded], rel=1e-6)


def mlflow_client(run_dir: Path):
    """A client of the store docs/train.md names, <runs_dir>/mlflow.db, with no environment variable."""
    from mlflow.tracking import MlflowClient

    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ
    return MlflowClient(tracking_uri=f"sqlite:///{run_dir.parent / 'mlflow.db'}")


@pytest.mark.slow  # trains (a few seconds per epoch)
def test_tensorboard_reads_back_every_epochs_val_dice(logged_run):
    logged = tensorboard_scalars(logged_run, "val_dice")
    assert [step for step, _ in logged] == [1, 2]
    assert_same(logged, history_of(logged_run, "val_dice"))
    for tag in ("train_loss", "val_loss", "lr", "seconds"):
        assert_same(tensorboard_scalars(logged_run, tag), history_of(logged_run, tag))


@pytest.mark.slow  # trains (a few seconds per epoch)
def test_tensorboard_shows_val_overlays_at_training_size_and_the_config(logged_run):
    import io

    from PIL import Image

    events = tensorboard_events(logged_run)
    images = events.Images("val_samples")
    assert [image.step for image in images[:2]] == [1, 2]
    with Image.open(io.BytesIO(images[0].encoded_image_string)) as first:
        assert first.size == (32, 32) and first.mode == "RGB"  # the one val image, at training size
    config = events.Tensors("config/text_summary")[0]
    assert config.step == 1 and b"image_size = 32" in config.tensor_proto.string_val[0]


@pytest.mark.slow  # trains (a few seconds per epoch)
def test_mlflow_reads_back_params_metrics_and_artifacts(logged_run):
    from petseg_cli.run import read_mlflow_run

    client = mlflow_client(logged_run)
    run = client.get_run(read_mlflow_run(logged_run)["run_id"])
    params = run.data.params
    assert params["train.epochs"] == "2" and params["data.image_size"] == "32" and params["model.name"] == "resnet34-unet"
    assert params["run.torch_version"]  # config.toml's [run] facts too
    for key in ("val_dice", "train_loss", "val_loss", "lr", "seconds"):
        metric = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert_same(sorted(metric), history_of(logged_run, key))
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"best.pth", "history.json", "config.toml"} <= artifacts
    assert run.info.artifact_uri.startswith((logged_run.parent / "mlartifacts").as_uri())  # beside the runs
    assert run.info.status == "FINISHED"
    assert sorted(p.name for p in logged_run.parent.iterdir()) == ["mlartifacts", "mlflow.db", logged_run.name]


@pytest.mark.slow  # reuses the trained run; a file store of its own
def test_a_run_logged_to_the_old_file_store_goes_on_logging_there(logged_run, tmp_path, monkeypatch):
    """Before SQLite, petseg's default store was <runs_dir>/mlruns (a file store): a run that logged
    there keeps its MLflow run when it logs again (a resume), and `compare runs/*` takes the stores in silently."""
    import shutil

    from mlflow.tracking import MlflowClient

    from petseg_cli.run import MLFLOW_RUN
    from petseg_cli.run.history import read_history
    from petseg_cli.run.trackers.mlflow_tracker import MlflowTracker

    run_dir = tmp_path / "runs" / logged_run.name
    shutil.copytree(logged_run, run_dir, ignore=shutil.ignore_patterns("tensorboard"))
    store = (tmp_path / "runs" / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # only to make the old store here, as petseg did
    old = MlflowClient(tracking_uri=store)
    run_id = old.create_run(old.create_experiment("petseg")).info.run_id
    (run_dir / MLFLOW_RUN).write_text(json.dumps({"tracking_uri": store, "run_id": run_id}))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    tracker = MlflowTracker(run_dir, start_epoch=3)
    tracker.log_epoch({**read_history(run_dir)["epochs"][-1], "epoch": 3})
    tracker.close("completed")
    assert tracker.run_id == run_id and [m.step for m in old.get_metric_history(run_id, "val_dice")] == [3]
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    result = invoke_cli("compare", *[str(p) for p in sorted((tmp_path / "runs").iterdir())], "--format", "csv", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.slow  # trains (a few seconds per epoch)
def test_a_resumed_run_continues_both_trackers_without_a_repeated_step(resumed_run):
    run_dir, run_id = resumed_run
    from petseg_cli.run import read_mlflow_run

    logged = tensorboard_scalars(run_dir, "val_dice")
    assert [step for step, _ in logged] == [1, 2, 3]
    assert_same(logged, history_of(run_dir, "val_dice"))
    assert read_mlflow_run(run_dir)["run_id"] == run_id  # the same MLflow run, continued
    client = mlflow_client(run_dir)
    steps = [m.step for m in client.get_metric_history(run_id, "val_dice")]
    assert sorted(steps) == [1, 2, 3]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "logger, package, download",
    [("mlflow", "mlflow", False), ("tensorboard", "tensorboard", False), ("mlflow", "mlflow", True)],
)
def test_a_missing_tracker_package_is_one_line_naming_the_extra(dataset, tmp_path, logger, package, download):
    # With --download and no dataset: said before the download is tried.
    data_dir, extra = (str(tmp_path / "missing"), ", '--download'") if download else (str(dataset), "")
    code = (
        f"import sys\nsys.modules[{package!r}] = None\nfrom petseg_cli.cli.app import main\n"
        f"sys.argv = ['petseg', 'train', '--data-dir', {data_dir!r}, '--logger', {logger!r}, '--epochs', '1'{extra}]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f'pip install "petseg[{logger}]"' in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "missing").exists()  # nothing trained or fetched


def test_an_unknown_logger_is_one_line_naming_the_choices(dataset, tmp_path):
    result = invoke_cli("train", "--data-dir", str(dataset), "--logger", "wandb", cwd=tmp_path)
    assert result.returncode == 2
    assert "--logger must be one of tensorboard, mlflow, got 'wandb'" in result.stderr
    assert not (tmp_path / "runs").exists()
