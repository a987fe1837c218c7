"""Run directories written straight through ``petseg_cli.run``, for tests that need a run's files but
not a real training: any model, any history, finished or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from petseg_cli.run import create_run_dir, write_config, write_history
from petseg_cli.models import build_model, count_parameters
from petseg_cli.config.settings import Settings

IMAGE_SIZE = 64


def epoch_records(
    val_dice: list[float], train_loss: list[float], seconds: float, images_per_s: float
) -> list[dict[str, Any]]:
    return [
        {
            "epoch": epoch, "train_loss": loss, "val_loss": loss, "val_dice": dice,
            "lr": 1e-4, "seconds": seconds, "images_per_s": images_per_s,
        }
        for epoch, (dice, loss) in enumerate(zip(val_dice, train_loss), start=1)
    ]


def write_run(
    runs_dir: Path,
    name: str,
    model: str,
    epochs: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    planned: int,
    cbam: bool = True,
    image_size: int = IMAGE_SIZE,
) -> Path:
    """A run directory holding config.toml and history.json (no checkpoints)."""
    settings = Settings()
    settings.model.name, settings.model.cbam = model, cbam
    settings.data.image_size, settings.train.epochs = image_size, planned
    run = create_run_dir(runs_dir, name, explicit=True)
    write_config(run, settings, {"device": "cpu", "parameters": count_parameters(build_model(model, cbam=cbam))})
    write_history(run, epochs, summary)
    return run


def finished_summary(epochs: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    best = max(epochs, key=lambda e: e["val_dice"])
    return {
        "best_epoch": best["epoch"], "best_val_dice": best["val_dice"],
        "total_seconds": sum(e["seconds"] for e in epochs), "stop_reason": stop_reason,
        "epochs_run": len(epochs), "parameters": None,
    }


def copy_run(run: Path, destination: Path) -> Path:
    """The files a run's model is served from (config, history, best.pth), copied into ``destination``."""
    import shutil

    destination.mkdir()
    for name in ("config.toml", "history.json", "best.pth"):
        shutil.copy(run / name, destination / name)
    return destination


def petseg_in_a_fresh_process(args: list[str], cwd: Path, modules: tuple[str, ...]) -> tuple[int | None, list[str], str]:
    """``petseg ARGS`` in a new interpreter: its exit code, which of ``modules`` it had imported by the end,
    and its stderr (what a start-up import costs cannot be seen in this process, which has them all)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import json, sys\nfrom petseg_cli.cli.app import main\n"
        f"sys.argv = ['petseg', *{args!r}]\ncode = 0\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(json.dumps([code, sorted(m for m in {list(modules)!r} if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={"PYTHONPATH": str(repo)}, capture_output=True, text=True)
    exit_code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return exit_code, loaded, done.stderr


def assert_plain_checkpoints(run: Path, model: str) -> None:
    """best.pth and last.pth hold a plain model's state (no torch.compile or DDP prefixes) that loads, strictly,
    into ``model`` built afresh: what a compiled or multi-process run must save."""
    import torch

    for name in ("best.pth", "last.pth"):
        state = torch.load(run / name, weights_only=True)["state_dict"]
        assert not [k for k in state if "_orig_mod" in k or k.startswith("module.")]
        build_model(model).load_state_dict(state)  # strict
