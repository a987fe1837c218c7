"""The two Rich consoles every module prints through: ``out`` for results, ``err`` for progress and warnings."""

from rich.console import Console, RenderableType
from rich.measure import Measurement

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True)


def print_table(table: RenderableType) -> None:
    """Print to ``out``; into a pipe or a file (80 columns to Rich) at the table's natural width, unwrapped."""
    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
    Console(file=out.file, width=max(natural, out.width), highlight=False).print(table)
