"""The two Rich consoles every module prints through: ``out`` for results, ``err`` for progress and warnings.

Rich is imported on the first print, not at import time: ``petseg --help`` never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

UNBOUNDED_WIDTH = 10_000  # columns to measure a table's natural width in


class LazyConsole:
    """Stands for a ``rich.console.Console`` built with ``options`` the first time it is used."""

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_console", None)

    def get(self) -> "Console":
        if self._console is None:
            from rich.console import Console

            object.__setattr__(self, "_console", Console(**self._options))
        return self._console

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.get(), name, value)


out = LazyConsole(highlight=False)
err = LazyConsole(stderr=True, highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def warn(message: str) -> None:
    """One warning line; ``message`` is plain text (brackets in paths or TOML sections are kept)."""
    err.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True, markup=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)


def print_table(table: "RenderableType") -> None:
    """Print to ``out``; into a pipe or a file (80 columns to Rich) at the table's natural width, unwrapped."""
    from rich.console import Console
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out.get(), out.options.update_width(UNBOUNDED_WIDTH), table).maximum
    Console(file=out.file, width=max(natural, out.width), highlight=False).print(table)
