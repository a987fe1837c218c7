"""The docs say what the commands do: every option of each command's --help is in its docs page, the
values --help lists (compare's columns, serve's answers) are there too, every section petseg.toml points
to exists, defaults read one way in --help, and its jargon is explained where it first appears."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO
from petseg_cli.cli.app import app

PAGES = {"serve": "serving.md"}  # each command's page, docs/<command>.md unless named here
JARGON = ("CBAM", "NHWC", "AMX", "QDQ", "ECE")


def commands() -> dict:
    """Typer's command objects (Click's, as Typer vendors it), by name."""
    return dict(typer.main.get_command(app).commands)


def page(command: str) -> str:
    return (REPO / "docs" / PAGES.get(command, f"{command}.md")).read_text(encoding="utf-8")


def help_text(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "2000"})  # one line per option
    assert result.exit_code == 0, result.output
    return result.output


def mentioned(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", list(commands()))
def test_every_option_in_a_command_s_help_is_in_its_docs_page(command):
    options = [
        flag for param in commands()[command].params if param.param_type_name == "option"
        for flag in (*param.opts, *param.secondary_opts) if flag.startswith("--") and flag != "--help"
    ]
    assert options and [flag for flag in options if not mentioned(flag, page(command))] == []


def test_the_values_help_lists_are_in_the_docs_too():
    from petseg_cli.commands.compare import COLUMN_KEYS
    from petseg_cli.serve.answers import FORMATS

    assert [key for key in COLUMN_KEYS if not mentioned(key, page("compare"))] == []
    assert all(key in help_text("compare") for key in COLUMN_KEYS)
    assert [fmt for fmt in FORMATS if f"format={fmt}" not in page("serve")] == []
    said = re.sub(r"-\s+", "-", " ".join(help_text("serve").split("GET /v1/model")[0].split()))  # unwrapped
    named = {"mask": "a mask", "probs": "probabilities", "overlay": "an overlay", "cutout": "a cut-out", "coco": "COCO", "json": "JSON"}
    assert set(named) == set(FORMATS) and [fmt for fmt, words in named.items() if words not in said] == []


def sections(path: Path) -> set[str]:
    """A page's headings and its bold paragraph leads (**Memory.**), which the docs use as sub-sections."""
    text = path.read_text(encoding="utf-8")
    return {*re.findall(r"^#+ (.+?)\s*$", text, re.M), *re.findall(r"^\*\*(.+?)\.\*\*", text, re.M)}


def test_every_page_and_section_petseg_toml_points_to_exists():
    pointers = re.findall(r'\b(README|docs/[\w.-]+\.md)(?:, "([^"]+)")?', (REPO / "petseg.toml").read_text(encoding="utf-8"))
    assert pointers
    for where, section in pointers:
        path = REPO / ("README.md" if where == "README" else where)
        assert path.is_file(), where
        assert not section or section in sections(path), (where, section, sorted(sections(path)))


def test_defaults_read_one_way_and_jargon_is_explained_where_it_first_appears():
    helps = {command: help_text(command) for command in commands()}
    assert {c: h.count("(default") for c, h in helps.items() if "(default" in h} == {}
    for word in JARGON:
        for command, text in helps.items():
            first = re.search(rf"\b{word}\b(.{{0,3}})", text)
            assert first is None or first.group(1).startswith((" (", ":")), (command, word, text[first.start() - 40 : first.end() + 40])
    assert all(any(word in text for text in helps.values()) for word in JARGON)
