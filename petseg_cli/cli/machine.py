"""``petseg machine``'s options: what train's "auto" settings decide on this machine. Registered on the
app by cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import CONFIG, run_command
from ..base.console import out, print_table
from ..config.settings import DEFAULTS, load_settings


def machine(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model to decide for, repeatable (default: every model: unet, resnet34-unet)."),
    image_size: Optional[List[int]] = typer.Option(
        None, "--image-size", help=f"A training size to decide for, repeatable (default: {DEFAULTS.data.image_size})."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=f"The runs' batch size; precision auto times steps of it, at most 8 images (default: {DEFAULTS.train.batch_size})."),
    remeasure: bool = typer.Option(False, "--remeasure", help="Measure precision again instead of using the cached verdicts (an idle machine's are cached anew)."),
    config: Optional[Path] = CONFIG,
) -> None:
    """What train's auto settings choose here, and why.

    Precision (measured as training measures it, or cached), compile, threads, loader workers and the
    allocator, for each model and size."""
    from ..commands.decisions import machine_decisions
    from ..models import MODELS
    from .render import key_value_table, machine_table

    def go():
        settings = load_settings(config, overrides={"train": {"batch_size": batch_size}} if batch_size else None)
        return machine_decisions(settings, model or list(MODELS), image_size or [settings.data.image_size], remeasure)

    report = run_command(go)
    print_table(key_value_table(report.facts()))
    out.print()
    print_table(machine_table(report.decisions))
    for decision in report.decisions:
        out.print(f"{decision.model} at {decision.image_size}px: precision {decision.how}; compile {decision.compile_reason}",
                  soft_wrap=True, markup=False)
