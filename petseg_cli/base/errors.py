"""The one exception type for a user's mistake or a failure the user can fix.

The CLI turns a ``PetsegError`` into a single line on stderr and a non-zero exit, never a traceback.
"""


class PetsegError(Exception):
    """A problem to report to the user in one line. ``exit_code`` 1 = failure at run time, 2 = bad usage."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(PetsegError):
    """Bad options or settings (exit code 2, as Typer uses for bad usage)."""

    exit_code = 2


def malformed(option: str, form: str, example: str, value: object, why: str = "") -> UsageError:
    """The one way a composite value (a range, a schedule, a duration, NAME=VALUE) that cannot be read is
    reported: one sentence naming the form it takes, with an example, never the parser's own words."""
    got = f"{value!r}: {why}" if why else repr(value)
    return UsageError(f"{option} expects {form}, e.g. {example} (got {got})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (without the terminal colours some libraries add), or its
    type's name when it has none: what a one-line report of a library's failure shows."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
