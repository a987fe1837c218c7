"""The checkpoint format: what best.pth and last.pth hold, written atomically and read back safely.

Format 2 (``"format": 2``) records in every file which weights its ``state_dict`` holds (``"weights"``):

    best.pth   model, model_args, image_size, state_dict (the weights validation scored), weights
               ("ema" or "raw"), epoch, val_dice
    last.pth   the same for the last finished epoch (with an EMA, its averaged weights: validated too),
               and what a resume needs: raw_state_dict (the weights the optimiser trains, only when
               they differ from state_dict), ema_updates, optimizer (None once dropped), scheduler,
               scaler, early_stopping, rng, history

Files written before format 2 (no "format" key) still load: their last.pth held the raw weights in
``state_dict`` and the whole ``AveragedModel`` under ``"ema"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError
from ..base.files import atomic_writer

FORMAT = 2
RAW, EMA = "raw", "ema"  # which weights a file's state_dict holds


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    import torch

    with atomic_writer(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: a file holding anything but tensors and plain data is refused."""
    import pickle

    import torch

    if not path.is_file():
        raise PetsegError(
            f"{path} does not exist: it is written when an epoch of the run finishes "
            f"(to train the run: petseg train --resume {path.parent})"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise PetsegError(f"{path} was refused: it holds more than weights ({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().split(". ")[0]  # torch's first sentence; the rest is advice for its developers
        raise PetsegError(f"{path} cannot be read: it is truncated or not a checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise PetsegError(f"{path} is not a petseg checkpoint (no state_dict)")
    return checkpoint


def weights_record(
    model: str, model_args: dict[str, Any], image_size: int, state_dict: dict[str, Any], weights: str
) -> dict[str, Any]:
    """What every checkpoint file holds: the validated weights and what rebuilds their model."""
    return {
        "format": FORMAT,
        "weights": weights,
        "model": model,
        "model_args": model_args,
        "image_size": image_size,
        "state_dict": state_dict,
    }


@dataclass
class TrainingState:
    """What last.pth keeps of a training in progress (everything a resume restores)."""

    epoch: int
    raw: dict[str, Any]  # the weights the optimiser trains
    ema: dict[str, Any] | None  # the averaged weights, None without an EMA
    ema_updates: int  # how many updates the EMA has had (its decay warms up over the first ones)
    optimizer: dict[str, Any] | None  # None: dropped when the run finished (it cannot be resumed)
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    early_stopping: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, Any]]


def last_record(weights: dict[str, Any], state: TrainingState) -> dict[str, Any]:
    """last.pth: ``weights`` (a ``weights_record`` of the validated weights) and ``state``. The raw
    weights are stored apart only when they are not the validated ones and a resume can use them."""
    record = {
        **weights,
        "epoch": state.epoch,
        "ema_updates": state.ema_updates,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": state.scaler,
        "early_stopping": state.early_stopping,
        "rng": state.rng,
        "history": state.history,
    }
    if state.optimizer is None:
        record["optimizer_dropped"] = True
    elif weights["weights"] != RAW:
        record["raw_state_dict"] = state.raw
    return record


def training_state(checkpoint: dict[str, Any]) -> TrainingState:
    """The training state of a last.pth, of format 2 or older."""
    if "format" in checkpoint:
        averaged = checkpoint["weights"] == EMA
        raw = checkpoint.get("raw_state_dict", checkpoint["state_dict"])
        ema, updates = (checkpoint["state_dict"] if averaged else None), int(checkpoint.get("ema_updates", 0))
    else:  # before format 2: raw weights in state_dict, the AveragedModel's own state under "ema"
        raw, old = checkpoint["state_dict"], checkpoint.get("ema")
        ema = {k.removeprefix("module."): v for k, v in old.items() if k.startswith("module.")} if old else None
        updates = int(old["n_averaged"]) if old else 0
    return TrainingState(
        epoch=int(checkpoint["epoch"]),
        raw=raw,
        ema=ema,
        ema_updates=updates,
        optimizer=checkpoint.get("optimizer"),
        scheduler=checkpoint.get("scheduler"),
        scaler=checkpoint.get("scaler"),
        early_stopping=checkpoint["early_stopping"],
        rng=checkpoint["rng"],
        history=list(checkpoint["history"]),
    )
