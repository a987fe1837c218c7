"""What every ``petseg`` command's parser shares: how usage lines and bad values read, the options several
commands take (one definition each), and how a library call becomes one line on stderr and an exit code."""

from __future__ import annotations

import re

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from ..base.console import err, error, out, print_fitted
from ..base.errors import PetsegError
from ..config.settings import DEFAULTS, PRECISIONS, RUNTIMES

# A default said in words at the end of a help text: "... (default: the run's own)."
DEFAULT_IN_WORDS = re.compile(r"\s*\(default: (.*)\)\.$", re.DOTALL)


def say_defaults_alike(param) -> None:
    """Every default reads one way, Typer's ``[default: …]`` after the help: a value Typer knows is shown
    so already; a default said in words (the setting it comes from, the run's own), which a help text
    ends with "(default: …).", is moved there (and shown without Click's parentheses: ``shown_as_said``)."""
    said = DEFAULT_IN_WORDS.search(param.help or "")
    if said is not None:
        param.help = param.help[: said.start()] + "."
        param.show_default = said.group(1)


def shown_as_said(param, *, ctx, show_default_is_str, default_value) -> str:
    if show_default_is_str:
        return str(param.show_default)
    return super(type(param), param)._get_default_string(
        ctx=ctx, show_default_is_str=show_default_is_str, default_value=default_value
    )


class PlainOption(TyperOption):
    _get_default_string = shown_as_said


class PlainArgument(TyperArgument):
    """An argument shown as click shows them: ``RUN...`` in the usage line, no ``<list[Path]>`` type."""

    _get_default_string = shown_as_said

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> None:
        return None


def plain_reason(exc: typer.BadParameter) -> str:
    """A bad value's reason in petseg's words, not the validation library's ("Value error, ...",
    "Input should be a valid integer, unable to parse string as an integer")."""
    details = getattr(exc.__cause__, "errors", None)
    if callable(details):
        first = (details() or [{}])[0]
        kind, value = first.get("type", ""), first.get("input")
        if kind.startswith("int_"):
            return f"{value!r} is not a whole number"
        if kind.startswith("float_"):
            return f"{value!r} is not a number"
        if kind.startswith("bool_"):
            return f"{value!r} is not true or false"
    return exc.message.removeprefix("Value error, ")


class PetsegGroup(TyperGroup):
    """The ``petseg`` group: plain argument names in usage lines and plain reasons for bad values."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        plain = {TyperArgument: PlainArgument, TyperOption: PlainOption}
        for param in getattr(command, "params", []):
            if type(param) in plain:
                param.__class__ = plain[type(param)]
            if isinstance(param, (PlainOption, PlainArgument)):
                say_defaults_alike(param)
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            exc.message = plain_reason(exc)
            raise


CONFIG = typer.Option(None, "--config", help="Project config file (default: ./petseg.toml when it exists).")
DEVICE = typer.Option(
    None, "--device", help=f"auto, cpu, cuda or cuda:N (default: train.device in petseg.toml, else {DEFAULTS.train.device})."
)
WEIGHTS = typer.Option(None, "--weights", help="A run's best (best.pth) or last (last.pth) weights (default: best).")
PRECISION = typer.Option(
    None, "--precision", help=f"{', '.join(PRECISIONS)}; auto: chosen anew on this machine (default: what the run recorded it trained in)."
)
RUNTIME = typer.Option(
    None, "--runtime", help=f"What runs an exported .onnx file: {', '.join(RUNTIMES)} (auto: the faster here, measured "
    f"and cached; default: serve.runtime in petseg.toml, else {DEFAULTS.serve.runtime}).",
)
TTA = typer.Option(False, "--tta", help="Average the softmax of each image and of its horizontal flip: twice the model's work, "
                   "for +0.003 val Dice in the recipe ablation (docs/recipes.md), so it is off by default.")


def fail(message: str, code: int = 1) -> None:
    error(message)
    raise typer.Exit(code)


def run_command(function, *args, **kwargs):
    """Call a library function; a PetsegError becomes one line on stderr, Ctrl-C exit code 130."""
    try:
        return function(*args, **kwargs)
    except PetsegError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)


def print_lines(lines: list[str], fit: bool = True) -> None:
    """Lines of a report on stdout, fitted to a terminal (console.fitted); ``fit=False`` for data, such
    as the paths a command wrote, which stay one line each."""
    for line in lines:
        if fit:
            print_fitted(out, line)
        else:
            out.print(line, soft_wrap=True, markup=False)


def on_off(flag: bool | str) -> str:
    """A switch's default for --help: on, off, or a word such as auto."""
    return flag if isinstance(flag, str) else "on" if flag else "off"
