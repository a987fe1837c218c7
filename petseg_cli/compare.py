"""``petseg compare``: runs side by side, one row per run, as a Rich table or as text for a report
(Markdown, LaTeX), a program (CSV, JSON) — and their training curves in one picture."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import runs
from .console import info, print_table, warn
from .errors import PetsegError, UsageError
from .formatting import MEGA, duration, or_dash
from .run_stats import RunStats, load_run_stats

if TYPE_CHECKING:
    from rich.table import Table

MAX, MIN = "max", "min"  # which end of a figure column is best
BEST_STYLE = "bold green"


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


TABULATE_FORMATS = {OutputFormat.markdown: "pipe", OutputFormat.latex: "latex"}


@dataclass(frozen=True)
class Column:
    key: str  # the record field: the --sort name, the CSV header and the JSON key
    header: str  # the header of the table, Markdown and LaTeX
    show: Callable[[Any], str] = str
    numeric: bool = False  # right-aligned in the table
    best: str | None = None  # MAX or MIN for a figure column: its best value is highlighted and sorts first


def _fixed(digits: int, scale: float = 1.0) -> Callable[[float], str]:
    return lambda value: f"{value / scale:.{digits}f}"


def _figure(key: str, header: str, show: Callable[[Any], str], best: str) -> Column:
    return Column(key, header, show, numeric=True, best=best)


COLUMNS = (
    Column("run", "run"),
    Column("model", "model"),
    Column("batch_size", "batch", numeric=True),
    Column("learning_rate", "lr", "{:g}".format, numeric=True),
    Column("epochs_run", "epochs", numeric=True),  # shown as run/planned, see _cell
    Column("stop_reason", "stop"),
    Column("best_epoch", "best epoch", numeric=True),
    _figure("best_val_dice", "best val Dice", _fixed(4), MAX),
    _figure("test_dice", "test Dice", _fixed(4), MAX),
    _figure("parameters", "params (M)", _fixed(2, MEGA), MIN),
    _figure("weights_mb", "weights (MB)", _fixed(1), MIN),
    _figure("train_seconds", "train time", duration, MIN),
    _figure("seconds_per_epoch", "s/epoch", _fixed(1), MIN),
    _figure("images_per_s", "train img/s", _fixed(1), MAX),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
DEFAULT_SORT = "best_val_dice"


def _rounded(value: float | None, scale: float = 1.0) -> float | None:
    return None if value is None else round(value / scale, 3)


def record(stats: RunStats) -> dict[str, Any]:
    """A run's row as plain values (JSON and CSV print exactly these)."""
    s = stats.settings
    return {
        "run": stats.name,
        "model": stats.model,
        "batch_size": s.train.batch_size,
        "learning_rate": s.train.learning_rate,
        "epochs_run": len(stats.epochs),
        "epochs_planned": s.train.epochs,
        "stop_reason": stats.stop_reason,
        "best_epoch": stats.best_epoch,
        "best_val_dice": stats.best_val_dice,
        "test_dice": stats.test_dice,
        "parameters": stats.parameters,
        "weights_mb": _rounded(stats.weights_bytes, MEGA),
        "train_seconds": _rounded(stats.total_seconds),
        "seconds_per_epoch": _rounded(stats.seconds_per_epoch),
        "images_per_s": _rounded(stats.images_per_s),
    }


def load_runs(paths: list[Path]) -> list[RunStats]:
    """The runs among ``paths``; every other path is skipped with one warning line."""
    loaded, seen = [], set()
    for path in paths:
        if path.resolve() in seen:  # the same run named twice
            continue
        seen.add(path.resolve())
        if not runs.is_run(path):
            warn(f"skipping {path}: not a petseg run (it needs {runs.CONFIG} and {runs.HISTORY})")
            continue
        try:
            loaded.append(load_run_stats(path))
        except PetsegError as exc:
            warn(f"skipping {path}: {exc}")
    if not loaded:
        raise PetsegError(f"no petseg run to compare among the {len(paths)} path(s) given")
    return loaded


def column(key: str) -> Column:
    for c in COLUMNS:
        if c.key == key:
            return c
    raise UsageError(f"cannot sort by {key!r}; choose one of: {', '.join(COLUMN_KEYS)}")


def sort_records(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Best first for a figure column, ascending for the others; runs without the value last."""
    by = column(key)
    present = [r for r in records if r[key] is not None]
    present.sort(key=lambda r: r[key], reverse=by.best == MAX)
    return present + [r for r in records if r[key] is None]


def _cell(c: Column, r: dict[str, Any]) -> str:
    if c.key == "epochs_run":
        return f"{r['epochs_run']}/{r['epochs_planned']}"
    return or_dash(r[c.key], c.show)


def _justify(c: Column) -> str:
    return "right" if c.numeric else "left"


def best_values(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The best value of each figure column that at least two runs have."""
    best = {}
    for c in COLUMNS:
        values = [r[c.key] for r in records if r[c.key] is not None]
        if c.best and len(values) > 1:
            best[c.key] = max(values) if c.best == MAX else min(values)
    return best


def rich_table(records: list[dict[str, Any]]) -> "Table":
    """The Rich table, the best value of each figure column in bold green (no markup is parsed in cells)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for c in COLUMNS:
        table.add_column(c.header, justify=_justify(c))
    best = best_values(records)
    for r in records:
        table.add_row(
            *(Text(_cell(c, r), style=BEST_STYLE if c.key in best and r[c.key] == best[c.key] else "") for c in COLUMNS)
        )
    return table


def render_text(records: list[dict[str, Any]], output_format: OutputFormat) -> str:
    """The table as plain text: Markdown or LaTeX through tabulate, CSV through csv, JSON through json."""
    if output_format is OutputFormat.json:
        return json.dumps(records, indent=2)
    if output_format is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue().rstrip("\n")
    from tabulate import tabulate

    return tabulate(
        [[_cell(c, r) for c in COLUMNS] for r in records],
        headers=[c.header for c in COLUMNS],
        tablefmt=TABULATE_FORMATS[output_format],
        colalign=[_justify(c) for c in COLUMNS],
        disable_numparse=True,
    )


def compare(
    paths: list[Path],
    sort: str = DEFAULT_SORT,
    output_format: OutputFormat = OutputFormat.table,
    plot: Path | None = None,
) -> list[dict[str, Any]]:
    """Print the runs among ``paths`` side by side (and draw their curves into ``plot``); return the rows."""
    column(sort)  # an unknown column fails before any run is read
    run_stats = load_runs(paths)
    records = sort_records([record(stats) for stats in run_stats], sort)
    if output_format is OutputFormat.table:
        print_table(rich_table(records))
    else:
        sys.stdout.write(render_text(records, output_format) + "\n")
    if plot is not None:
        from .plots import plot_curves

        info(f"curves of {len(run_stats)} run(s) written to {plot_curves(run_stats, plot)}")
    return records
