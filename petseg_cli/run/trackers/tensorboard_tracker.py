"""``--logger tensorboard``: event files in the run directory's tensorboard/ folder (scalars per epoch,
the resolved config as text, the first val images' overlays: prediction red, truth outlined green). A resumed run writes into the same folder after its restored epochs:
``purge_step`` makes TensorBoard drop anything a killed process logged past them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import CONFIG, TENSORBOARD
from . import SCALARS, Samples


class TensorBoardTracker:
    def __init__(self, run_dir: Path, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        first = start_epoch + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD), purge_step=first)
        config = (run_dir / CONFIG).read_text(encoding="utf-8")
        # Markdown: indented, the TOML shows as code. At the first epoch this process trains: one per start.
        self.writer.add_text("config", "\n".join("    " + line for line in config.splitlines()), first)
        self.writer.flush()

    def log_epoch(self, record: dict[str, Any], samples: Samples | None = None) -> None:
        for key in SCALARS:
            self.writer.add_scalar(key, record[key], record["epoch"])
        if samples is not None:
            self.writer.add_images("val_samples", samples(), record["epoch"], dataformats="NHWC")
        self.writer.flush()

    def close(self, stop_reason: str) -> None:
        self.writer.close()


def open_tracker(run_dir: Path, start_epoch: int) -> TensorBoardTracker:
    return TensorBoardTracker(run_dir, start_epoch)
