"""Records to Rich tables and lines: what cli.py prints for each command's result. Nothing else renders.

Tables fit the terminal: a table that has columns to spare drops the least important ones until it fits
(``fit_width``), so at 80 columns every line is at most 80 characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..commands.compare import test_dice_note
from ..commands.compare import BEST_STYLE, Column, _cell, _justify, best_values, column_width, run_labels
from ..base.formatting import DASH, GIGA
from ..run import AT_ORIGINAL

if TYPE_CHECKING:
    from rich.table import Table

    from ..commands.decisions import ModelDecision
    from ..commands.evaluate import Evaluation
    from ..models.summary import ModelSummary


def terminal_width() -> int | None:
    """The width to fit tables in: the terminal's, or $COLUMNS; None into a pipe without $COLUMNS."""
    import os

    from ..base.console import out

    if out.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return out.width
    return None


def table_width(table: "Table") -> int:
    import io

    from rich.console import Console

    return Console(width=10_000, file=io.StringIO()).measure(table).maximum


def fit_width(build: Callable[[list[str]], "Table"], columns: list[str], optional: list[str]) -> "Table":
    """``build(columns)``, leaving out ``optional`` columns (the last first) until it fits the terminal."""
    shown, width = list(columns), terminal_width()
    table = build(shown)
    for name in reversed(optional):
        if width is None or table_width(table) <= width:
            break
        shown.remove(name)
        table = build(shown)
    return table


def comparison_table(records: list[dict[str, Any]], columns: list[Column], data: str | None = None) -> "Table":
    """The Rich table, the best value of each figure column in bold green (no markup is parsed in cells).
    Every column is exactly as wide as its widest cell (headers fold onto two lines instead)."""
    from rich.table import Table
    from rich.text import Text

    caption = test_dice_note(data) if any(c.key.startswith("test_") for c in columns) else None
    table = Table(header_style="bold", caption=caption, caption_justify="left")
    for c in columns:
        table.add_column(c.header, justify=_justify(c), width=column_width(c, records), overflow="fold")
    best = best_values(records, columns)
    for r in records:
        table.add_row(
            *(Text(_cell(c, r), style=BEST_STYLE if c.key in best and r[c.key] == best[c.key] else "") for c in columns)
        )
    return table


# The evaluate table's figures after run and images: (header, key in the record), the headline first;
# those after the first two are left out, last first, when the terminal is narrow.
FIGURES = {"Dice": "dice", "pooled Dice": "pooled_dice", "IoU": "iou", "pixel acc.": "pixel_accuracy", "CE": "cross_entropy"}
TIMING = ("seconds", "images/s")


def evaluation_title(split: str, weights: str, at: str, tta: bool, evaluations: list["Evaluation"] = ()) -> str:
    """What the table scored; for an exported file, the file and what ran it (its evaluation's record)."""
    size = "each image's original size" if at == AT_ORIGINAL else "the run's training size"
    settings = evaluations[0].record["settings"] if evaluations else {}
    model = f", {Path(settings['model_file']).name} on {settings['runtime']} {settings['precision']}" if settings.get("model_file") else ""
    weights = settings.get("weights", weights)
    scales = settings.get("tta_scales") or []
    scaled = f"scales {', '.join(f'{s:g}' for s in scales)}" if scales else ""
    augmented = " and ".join(part for part in ("horizontal flip" if tta else "", scaled) if part)
    return f"{split} split, {weights} weights{model}, scored at {size}" + (f", TTA: {augmented}" if augmented else "")


def _evaluation_cells(record: dict[str, Any]) -> dict[str, str]:
    cells = {header: f"{record[key]:.4f}" for header, key in FIGURES.items()}
    cells["seconds"] = f"{record['seconds']:.1f}"
    cells["images/s"] = f"{record['images_per_s']:.1f}" if record["images_per_s"] else "-"
    return cells


def evaluation_table(evaluations: list["Evaluation"], title: str) -> "Table":
    from rich.table import Table
    from rich.text import Text

    labels = run_labels([e.run_dir for e in evaluations])  # names, with parents only where two are alike
    rows = [(label, str(e.record["images"]), _evaluation_cells(e.record)) for label, e in zip(labels, evaluations)]

    def build(shown: list[str]) -> "Table":
        table = Table(title=title)
        table.add_column("run", overflow="fold")
        table.add_column("images", justify="right")
        for header in shown:
            table.add_column(header, justify="right")
        for run, images, cells in rows:
            table.add_row(Text(run), images, *(cells[h] for h in shown))
        return table

    columns = [*FIGURES, *TIMING]
    return fit_width(build, columns, columns[2:])


def modules_table(summary: "ModelSummary") -> "Table":
    """One row per module: the output shapes of a module with several outputs fold onto lines of their own."""
    from rich.table import Table

    def build(shown: list[str]) -> "Table":
        table = Table(header_style="bold")
        table.add_column("module")
        table.add_column("type")
        for header in shown:
            table.add_column(header, justify="left" if header == "output shape" else "right", overflow="fold")
        for row in summary.rows:
            cells = {
                "output shape": row.output_shape.replace("], [", "],\n["),
                "parameters": f"{row.parameters:,}",
                "GFLOPs": f"{row.flops / GIGA:.3f}" if row.flops else DASH,
            }
            table.add_row("  " * (row.depth - 1) + row.name.rsplit(".", 1)[-1], row.kind, *(cells[h] for h in shown))
        return table

    columns = ["output shape", "parameters", "GFLOPs"]
    return fit_width(build, columns, ["GFLOPs"])


def key_value_table(pairs: list[tuple[str, str]]) -> "Table":
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(no_wrap=True)  # a path is never cut: too wide, the table prints at its natural width
    for key, value in pairs:
        table.add_row(key, Text(value))  # a run's path or name is shown as it is, never read as markup
    return table


def evaluation_details(evaluation: "Evaluation") -> list["Table"]:
    """A run's tables by group and its threshold sweep, when evaluate was asked for them."""
    from rich.table import Table
    from rich.text import Text

    tables = []
    name = evaluation.run_dir.name
    for by, rows in evaluation.groups.items():
        table = Table(title=f"{name}: by {by}")
        for header in (by, "images", "Dice", "pooled", "IoU", "worst photos"):
            table.add_column(header, justify="left" if header in (by, "worst photos") else "right", overflow="fold")
        for r in rows:
            worst = "\n".join(f"{n} {d:.2f}" for n, d in r.worst)
            table.add_row(Text(r.group), str(r.count), f"{r.dice:.4f}", f"{r.pooled_dice:.4f}", f"{r.iou:.4f}", Text(worst))
        tables.append(table)
    if evaluation.sweep:
        record = evaluation.record["thresholds"]
        table = Table(title=f"{name}: Dice by threshold", caption=f"calibration error (ECE) {record['ece']:.4f}")
        table.add_column("threshold", justify="right")
        table.add_column("Dice", justify="right")
        for threshold, dice in evaluation.sweep:
            style = "bold green" if threshold == record["best"] else ""
            table.add_row(Text(f"{threshold:g}", style=style), Text(f"{dice:.4f}", style=style))
        tables.append(table)
    return tables


def sweep_line(evaluation: "Evaluation") -> str:
    record = evaluation.record["thresholds"]
    best = f"{evaluation.run_dir}: best threshold {record['best']:g} (Dice {record['best_dice']:.4f})"
    if evaluation.threshold_recorded:
        s = evaluation.record["settings"]
        return f"{best}, chosen on val: kept for infer and serve with {s['weights']} weights{' and' if s['tta'] else ', no'} TTA"
    if evaluation.data is not None:
        return f"{best} on another data set's {evaluation.record['split']} split: reported only (the run's threshold is chosen on its own)"
    return f"{best} on {evaluation.record['split']}: reported only (a threshold is chosen on --split val, never on test)"


def machine_table(decisions: list["ModelDecision"]) -> "Table":
    """petseg machine's decisions: a row per model and size."""
    from rich.table import Table

    table = Table(title="what auto decides")
    for column in ("model", "size", "precision", "fp32 ms", "bf16 ms", "cached", "compile"):
        table.add_column(column, justify="right" if column.endswith("ms") else "left")
    for d in decisions:
        ms = [f"{d.seconds[name] * 1000:.0f}" if name in d.seconds else "-" for name in ("fp32", "bf16")]
        table.add_row(d.model, f"{d.image_size}px", d.precision, *ms, "yes" if d.cached else "no", "on" if d.compile else "off")
    return table
