"""The two Rich consoles every module prints through: ``out`` for results, ``err`` for progress and warnings."""

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
UNBOUNDED_WIDTH = 10_000  # columns to measure a table's natural width in


def warn(message: str) -> None:
    """One warning line; ``message`` is plain text (brackets in paths or TOML sections are kept)."""
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True, markup=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def print_table(table: RenderableType) -> None:
    """Print to ``out``; into a pipe or a file (80 columns to Rich) at the table's natural width, unwrapped."""
    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out, out.options.update_width(UNBOUNDED_WIDTH), table).maximum
    Console(file=out.file, width=max(natural, out.width), highlight=False).print(table)
