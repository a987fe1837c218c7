"""``petseg compare``: runs side by side, one row per run, as a Rich table or as text for a report
(Markdown, LaTeX), a program (CSV, JSON) — and their training curves in one picture."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from ..base.errors import PetsegError, UsageError, malformed
from ..base.formatting import MEGA, duration, or_dash
from ..models.size_schedule import parse_size_schedule
from ..run import CONFIG, HISTORY, is_run
from ..run.stats import RunStats, load_run_stats
from ..run.trackers import BESIDE_THE_RUNS

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
    key: str  # the record field: the --sort and --columns name, the CSV header and the JSON key
    header: str  # the header of the table, Markdown and LaTeX
    show: Callable[[Any], str] = str
    numeric: bool = False  # right-aligned in the table
    best: str | None = None  # MAX or MIN for a figure column: its best value is highlighted and sorts first
    priority: int = 0  # the table drops the highest numbers first when it does not fit the terminal


def _fixed(digits: int, scale: float = 1.0) -> Callable[[float], str]:
    return lambda value: f"{value / scale:.{digits}f}"


def _figure(key: str, header: str, show: Callable[[Any], str], best: str, priority: int) -> Column:
    return Column(key, header, show, numeric=True, best=best, priority=priority)


def test_dice_note(data: str | None) -> str:
    """What the test Dice column is, and on which data set (``--data``; None: each run's own)."""
    on = f"on the data set {data}" if data else "on each run's own data set"
    return f"test Dice: best.pth, scored at each image's original size, no TTA, {on} (petseg evaluate RUN)"



COLUMNS = (
    Column("run", "run"),
    Column("model", "model", priority=4),
    Column("image_size", "size", numeric=True, priority=2),
    Column("train_images", "train images", numeric=True, priority=5),
    Column("batch_size", "batch", numeric=True, priority=11),
    Column("learning_rate", "lr", "{:g}".format, numeric=True, priority=12),
    Column("epochs_run", "epochs", numeric=True, priority=6),  # shown as run/planned, see _cell
    Column("stop_reason", "stop", priority=8),
    Column("best_epoch", "best epoch", numeric=True, priority=13),
    _figure("best_val_dice", "best val Dice", _fixed(4), MAX, 3),
    _figure("test_dice", "test Dice", _fixed(4), MAX, 1),
    _figure("test_dice_training_size", "test Dice (train size)", _fixed(4), MAX, 16),
    _figure("test_dice_tta", "test Dice (TTA)", _fixed(4), MAX, 17),
    _figure("parameters", "params (M)", _fixed(2, MEGA), MIN, 9),
    _figure("weights_mb", "weights (MB)", _fixed(1), MIN, 14),
    _figure("train_seconds", "train time", duration, MIN, 7),
    _figure("seconds_per_epoch", "s/epoch", _fixed(1), MIN, 15),
    _figure("images_per_s", "train img/s", _fixed(1), MAX, 10),
    Column("worst_breed", "worst breed (test Dice)", priority=18),  # from evaluate --by breed
    Column("test_data", "test data", priority=19),  # the data set of the test figures (--data)
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
DEFAULT_SORT = "best_val_dice"
ALL_COLUMNS = "all"


def _rounded(value: float | None, scale: float = 1.0) -> float | None:
    return None if value is None else round(value / scale, 3)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's name, with as many of its parent directories as it takes to tell apart runs whose
    names are the same (``a/runs/unet-bs8`` and ``b/runs/unet-bs8``)."""
    resolved = [p.resolve() for p in run_dirs]
    labels = [p.name for p in resolved]
    for name in {n for n in labels if labels.count(n) > 1}:
        group = [i for i, n in enumerate(labels) if n == name]
        for depth in range(2, max(len(resolved[i].parts) for i in group) + 1):
            tails = ["/".join(resolved[i].parts[-depth:]).lstrip("/") for i in group]
            if len(set(tails)) == len(tails):
                break
        for i, tail in zip(group, tails):
            labels[i] = tail
    return labels


def record(stats: RunStats, label: str | None = None) -> dict[str, Any]:
    """A run's row as plain values (JSON and CSV print exactly these)."""
    s = stats.settings
    return {
        "run": label or stats.name,
        "path": str(stats.run_dir),
        "model": stats.model,
        "image_size": s.data.image_size,
        "size_schedule": s.data.size_schedule or None,  # progressive resizing, growing to image_size
        "train_images": (stats.facts.get("images") or {}).get("train"),
        "fraction": s.data.fraction,
        "limit": s.data.limit,
        "batch_size": s.train.batch_size,
        "learning_rate": s.train.learning_rate,
        "epochs_run": len(stats.epochs),
        "epochs_planned": s.train.epochs,
        "stop_reason": stats.stop_reason,
        "best_epoch": stats.best_epoch,
        "best_val_dice": stats.best_val_dice,
        "test_dice": stats.test_dice,
        "test_dice_training_size": stats.test_dice_training_size,
        "test_dice_tta": stats.test_dice_tta,
        "parameters": stats.parameters,
        "weights_mb": _rounded(stats.weights_bytes, MEGA),
        "train_seconds": _rounded(stats.total_seconds),
        "seconds_per_epoch": _rounded(stats.seconds_per_epoch),
        "images_per_s": _rounded(stats.images_per_s),
        "worst_breed": f"{stats.worst_breed[0]} {stats.worst_breed[1]:.4f}" if stats.worst_breed else None,
        "test_data": stats.test_data,
    }


def load_runs(paths: list[Path], skipped: list[str], data: str | None = None) -> list[RunStats]:
    """The runs among ``paths``; every other path is skipped, with one line in ``skipped`` saying why
    (the trackers' own files beside the runs silently)."""
    loaded, seen = [], set()
    for path in paths:
        if path.resolve() in seen:  # the same run named twice
            continue
        seen.add(path.resolve())
        if not is_run(path):
            if path.name in BESIDE_THE_RUNS:  # the trackers' store beside the runs: `compare runs/*` takes it in
                continue
            skipped.append(f"skipping {path}: not a petseg run (it needs {CONFIG} and {HISTORY})")
            continue
        try:
            loaded.append(load_run_stats(path, data))
        except PetsegError as exc:
            skipped.append(f"skipping {path}: {exc}")
    if not loaded:
        why = "; ".join(skipped)
        raise PetsegError(f"no petseg run to compare among the {len(paths)} path(s) given" + (f" ({why})" if why else ""))
    return loaded


def column(key: str, option: str = "--sort") -> Column:
    for c in COLUMNS:
        if c.key == key:
            return c
    raise UsageError(f"{option}: no column {key!r}; choose one of: {', '.join(COLUMN_KEYS)}")


def parse_columns(text: str | None) -> list[Column] | None:
    """``--columns run,test_dice,...`` (or ``all``) as columns in the order given; None: fit the terminal."""
    if text is None:
        return None
    if text.strip() == ALL_COLUMNS:
        return list(COLUMNS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise malformed("--columns", f"column names separated by commas, or {ALL_COLUMNS}", "run,test_dice", text)
    chosen = [column(k, "--columns") for k in keys]
    return chosen if chosen[0].key == "run" else [column("run"), *[c for c in chosen if c.key != "run"]]


CELL_PADDING, BORDER = 2, 1  # a Rich table's columns: one space each side, one rule between and at the edges


def column_width(c: Column, records: list[dict[str, Any]]) -> int:
    """The narrowest the column can be with no cell cut: its widest cell, its header folded at spaces."""
    cells = [len(_cell(c, r)) for r in records]
    return max([*cells, *(len(word) for word in c.header.split())])


def table_width(widths: list[int]) -> int:
    return sum(widths) + len(widths) * (CELL_PADDING + BORDER) + BORDER


def fit_columns(records: list[dict[str, Any]], width: int, keep: set[str]) -> list[Column]:
    """The columns that fit in ``width`` terminal columns: the least important dropped first (never the
    run, nor those in ``keep``); what is left may still be wider (a long run name is never cut)."""
    shown = list(COLUMNS)
    droppable = sorted((c for c in COLUMNS if c.priority and c.key not in keep), key=lambda c: -c.priority)
    for c in droppable:
        if table_width([column_width(x, records) for x in shown]) <= width:
            break
        shown.remove(c)
    return shown


def sort_records(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Best first for a figure column, ascending for the others; runs without the value last."""
    by = column(key)
    present = [r for r in records if r[key] is not None]
    present.sort(key=lambda r: r[key], reverse=by.best == MAX)
    return present + [r for r in records if r[key] is None]


def _cell(c: Column, r: dict[str, Any]) -> str:
    if c.key == "epochs_run":
        return f"{r['epochs_run']}/{r['epochs_planned']}"
    if c.key == "image_size" and r.get("size_schedule"):  # progressive resizing: START:END
        return f"{first_size(r['size_schedule'])}:{r['image_size']}"
    return or_dash(r[c.key], c.show)


def first_size(schedule: str) -> str:
    try:
        return str(parse_size_schedule(schedule).sizes[0])
    except PetsegError:  # a config.toml edited by hand
        return "?"


def _justify(c: Column) -> str:
    return "right" if c.numeric else "left"


def best_values(records: list[dict[str, Any]], columns: "list[Column] | tuple[Column, ...]" = COLUMNS) -> dict[str, Any]:
    """The best value of each figure column that at least two runs have."""
    best = {}
    for c in columns:
        values = [r[c.key] for r in records if r[c.key] is not None]
        if c.best and len(values) > 1:
            best[c.key] = max(values) if c.best == MAX else min(values)
    return best


def render_text(records: list[dict[str, Any]], output_format: OutputFormat, columns: "list[Column] | tuple[Column, ...]" = COLUMNS) -> str:
    """The table as plain text: Markdown or LaTeX through tabulate (the columns shown), CSV and JSON with
    every field of every run whatever the columns."""
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
        [[_cell(c, r) for c in columns] for r in records],
        headers=[c.header for c in columns],
        tablefmt=TABULATE_FORMATS[output_format],
        colalign=[_justify(c) for c in columns],
        disable_numparse=True,
    )


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` found: one record per run (best first by the sort column), the columns to show,
    the paths it skipped and why, and the curves picture it drew."""

    records: list[dict[str, Any]]
    columns: list[Column]
    output_format: OutputFormat
    skipped: list[str]
    curves: Path | None = None
    data: str | None = None  # the data set of the test figures (--data); None: each run's own


def compare(
    paths: list[Path],
    sort: str = DEFAULT_SORT,
    output_format: OutputFormat = OutputFormat.table,
    plot: Path | None = None,
    columns: str | None = None,
    width: int | None = None,
    data: str | None = None,
) -> Comparison:
    """The runs among ``paths`` side by side (their curves drawn into ``plot``).

    The table shows ``columns`` (``--columns``), else as many as fit ``width`` terminal columns (None: all),
    the least important dropped first; Markdown and LaTeX show the same, CSV and JSON every field. The
    test figures are each run's on its own data set, or on the one ``data`` names (``--data``)."""
    column(sort)  # an unknown column fails before any run is read
    chosen = parse_columns(columns)
    skipped: list[str] = []
    run_stats = load_runs(paths, skipped, data)
    labels = run_labels([stats.run_dir for stats in run_stats])
    records = sort_records([record(stats, label) for stats, label in zip(run_stats, labels)], sort)
    if chosen is None:
        fit = width if output_format is OutputFormat.table else None
        chosen = fit_columns(records, fit, {sort}) if fit else list(COLUMNS)
    curves = None
    if plot is not None:
        from ..run.plots import plot_curves

        curves = plot_curves(run_stats, plot, labels)
    return Comparison(records, chosen, output_format, skipped, curves, data)
