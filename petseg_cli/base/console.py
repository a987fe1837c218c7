"""The two Rich consoles every module prints through: ``out`` for results, ``err`` for progress and warnings.

Rich is imported on the first print, not at import time: ``petseg --help`` never needs it.
"""

from __future__ import annotations

import logging
import os
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


# A message wrapped on a terminal goes on under its first word, this far in.
WRAP_INDENT = "  "


def fitted(text: str, console: LazyConsole) -> list[str]:
    """``text`` as the lines to print on ``console``: one line (each of its own lines) in a pipe or a
    log, so that grep finds it whole; on a terminal, wrapped at its width between words, the lines after
    the first indented (a word longer than a line, such as a long path, is folded)."""
    if not console.is_terminal:
        return text.split("\n")
    return [line for paragraph in text.split("\n") for line in wrapped(paragraph, console.width)]


def wrapped(text: str, width: int) -> list[str]:
    """``text`` wrapped at ``width`` between words, the lines after the first indented by WRAP_INDENT."""
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=WRAP_INDENT, break_on_hyphens=False) or [""]


class FittedFormatter(logging.Formatter):
    """A log formatter whose records wrap at the terminal's width between words when its stream is a
    terminal (as console.fitted does); one line each in a pipe or a log file."""

    def __init__(self, fmt: str, stream: Any) -> None:
        super().__init__(fmt)
        self.stream = stream

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        try:
            if not self.stream.isatty():
                return text
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return text
        if width <= 0:  # a terminal with no size set
            return text
        return "\n".join(line for paragraph in text.split("\n") for line in wrapped(paragraph, width))


def print_fitted(console: LazyConsole, text: str, label: str = "", style: str = "") -> None:
    """Print plain ``text`` fitted to ``console`` (fitted), after ``label`` drawn in ``style``."""
    for number, line in enumerate(fitted(label + text, console)):
        if number == 0 and label:
            console.print(f"[{style}]{label.rstrip()}[/] {_escape(line[len(label):])}", soft_wrap=True)
        else:
            console.print(line, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    """One warning; ``message`` is plain text (brackets in paths or TOML sections are kept)."""
    print_fitted(err, message, "warning: ", "yellow")


def info(message: str) -> None:
    print_fitted(err, message)


def error(message: str) -> None:
    print_fitted(err, message, "error: ", "bold red")


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
