"""A run directory: ``Run`` opens one (config.toml, facts and history read once) and is the only code that
knows the files in it; ``names`` makes and finds them under a runs directory."""

from .directory import Run, read_config, write_config
from .evaluations import EVALUATION_JSON_GLOB, DataSet, Measure
from .history import write_history
from .layout import (
    AT_ORIGINAL, AT_TRAINING, BEST, CONFIG, CURVES, DEFAULT_WEIGHTS, HISTORY, LAST, MLFLOW_RUN, SCORED_AT,
    TENSORBOARD, THRESHOLD, WEIGHTS, check_weights, is_run, read_mlflow_run,
)
from .lock import RunBusyError, TrainingLock, check_not_training
from .names import (
    check_new_run_name, check_run_name, create_run_dir, default_run, default_run_name, discard_new_run_dir, list_runs,
    remove_unstarted_run_dir,
)
from .thresholds import ThresholdChoice

__all__ = [
    "AT_ORIGINAL", "AT_TRAINING", "BEST", "CONFIG", "CURVES", "DEFAULT_WEIGHTS", "HISTORY", "LAST", "MLFLOW_RUN",
    "EVALUATION_JSON_GLOB", "SCORED_AT", "TENSORBOARD", "THRESHOLD", "WEIGHTS", "DataSet", "Measure", "Run", "RunBusyError",
    "ThresholdChoice", "TrainingLock", "check_new_run_name", "check_not_training", "check_run_name", "check_weights", "create_run_dir",
    "default_run", "default_run_name", "discard_new_run_dir", "is_run", "list_runs", "read_config", "remove_unstarted_run_dir", "read_mlflow_run",
    "write_config", "write_history",
]
