"""``--logger mlflow``: one MLflow run per petseg run, in the store MLFLOW_TRACKING_URI names, else a
SQLite store beside the runs (<runs_dir>/mlflow.db, artifacts in <runs_dir>/mlartifacts), the store
MLflow 3 expects: ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` reads it. A run that
logged to the file store petseg used before (<runs_dir>/mlruns) goes on logging there when resumed.
Params are config.toml's settings and facts, metrics each epoch's numbers (step = epoch), and at the
end best.pth, history.json, config.toml and any evaluation JSON become the run's artifacts.

The MLflow run's id is kept in the run directory (run.MLFLOW_RUN), so that a resumed run continues
the same MLflow run; its params were logged when it began (MLflow's params cannot change)."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path
from typing import Any

from .. import BEST, CONFIG, EVALUATION_JSON_GLOB, HISTORY, MLFLOW_RUN, read_mlflow_run
from ...base.files import write_json_atomic
from . import MLFLOW_ARTIFACTS, MLFLOW_STORE, SCALARS, Samples

EXPERIMENT = "petseg"  # unless MLFLOW_EXPERIMENT_NAME names another
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
MAX_PARAM_CHARS = 500
STATUS = {"completed": "FINISHED", "early_stop": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED


def tracking_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI; else the file store this run logged to before, if it is still there; else
    the SQLite store beside the runs."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    recorded = recorded_file_store(run_dir)
    if recorded is not None:
        # MLflow 3 refuses a file store unless asked: this process asks, for this run's own store only.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return recorded
    return f"sqlite:///{run_dir.resolve().parent / MLFLOW_STORE}"


def recorded_file_store(run_dir: Path) -> str | None:
    """The file store (``file:`` URI) a run logged to before petseg's default became SQLite, if it exists."""
    try:
        uri = str(read_mlflow_run(run_dir).get("tracking_uri", ""))
    except (OSError, ValueError):
        return None
    if not uri.startswith("file:"):
        return None
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    return uri if Path(url2pathname(urlsplit(uri).path)).is_dir() else None


def artifact_location(uri: str, run_dir: Path) -> str | None:
    """Where a new experiment in petseg's default store keeps artifacts: beside the runs, not in the
    working directory (MLflow's default for a database store); None: the store's own default."""
    if uri != f"sqlite:///{run_dir.resolve().parent / MLFLOW_STORE}":
        return None
    return (run_dir.resolve().parent / MLFLOW_ARTIFACTS).as_uri()


def config_params(run_dir: Path) -> dict[str, str]:
    """config.toml flattened: ``section.key`` -> the value as text."""
    table = tomllib.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    return {
        f"{section}.{key}": str(value)[:MAX_PARAM_CHARS]
        for section, values in table.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


class MlflowTracker:
    def __init__(self, run_dir: Path, start_epoch: int) -> None:
        from mlflow.tracking import MlflowClient

        self.run_dir, self.uri = run_dir, tracking_uri(run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = self._continued() or self._started()

    def _continued(self) -> str | None:
        """The id of the MLflow run this run logged to before, if it is in this store; marked running."""
        from mlflow.exceptions import MlflowException

        try:
            recorded = read_mlflow_run(self.run_dir)
            if recorded.get("tracking_uri") != self.uri:
                return None
            run_id = str(recorded["run_id"])
            self.client.get_run(run_id)
        except (OSError, ValueError, KeyError, MlflowException):
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _started(self) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=artifact_location(self.uri, self.run_dir)
        )
        run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
        params = [Param(key, value) for key, value in config_params(self.run_dir).items()]
        for start in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=params[start : start + PARAMS_PER_CALL])
        write_json_atomic(self.run_dir / MLFLOW_RUN, {"tracking_uri": self.uri, "run_id": run_id})
        return run_id

    def log_epoch(self, record: dict[str, Any], samples: Samples | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(record[key]), now, record["epoch"]) for key in SCALARS]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, stop_reason: str) -> None:
        names = [BEST, HISTORY, CONFIG]
        paths = [self.run_dir / name for name in names] + sorted(self.run_dir.glob(EVALUATION_JSON_GLOB))
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=STATUS.get(stop_reason, "FAILED"))


def open_tracker(run_dir: Path, start_epoch: int) -> MlflowTracker:
    return MlflowTracker(run_dir, start_epoch)
