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

    def reset(self) -> None:
        """Forget the console: the next use builds it anew, from the environment then ($COLUMNS, the
        streams), as a new process would. For callers that run several commands in one process."""
        object.__setattr__(self, "_console", None)

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.get(), name, value)


class PipeSafe:
    """Standard output or error that a closed pipe (``petseg ... | head``, ``petseg ... 2>&1 | head``)
    silences instead of failing: once the reader is gone, what is printed goes to /dev/null and the
    command goes on (files it was asked to write are still written) to its normal exit status."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _reader_gone(self) -> None:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # also what Python flushes at exit
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


out = LazyConsole(highlight=False)
err = LazyConsole(stderr=True, highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _one_line() -> bool:
    """Messages stay one line each in a pipe or a log (grep finds them whole); on a terminal they wrap at
    its width, between words."""
    return not err.is_terminal


def warn(message: str) -> None:
    """One warning; ``message`` is plain text (brackets in paths or TOML sections are kept)."""
    err.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=_one_line())


def info(message: str) -> None:
    err.print(message, soft_wrap=_one_line(), markup=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=_one_line())


def print_table(table: "RenderableType") -> None:
    """Print to ``out``, never cutting a cell: a table that can fit the terminal (or a pipe's 80 columns)
    by folding cells that have room to fold is printed so; one that cannot is printed at its natural
    width, unwrapped, and the terminal folds its lines."""
    from rich.console import Console
    from rich.measure import Measurement

    measured = Measurement.get(out.get(), out.options.update_width(UNBOUNDED_WIDTH), table)
    if measured.minimum <= out.width:
        out.print(table)
        return
    terminal = out.is_terminal
    Console(
        file=out.file, width=measured.maximum, highlight=False, force_terminal=terminal,
        color_system=out.color_system if terminal else None,
    ).print(table)
