"""README.md stays short and true: its quick start runs as written (on generated data where it says the
dataset is), and every link into docs/ leads to a page and a heading that exist."""

import re
import shlex

import pytest

from conftest import REPO, run_cli
from synthetic import make_dataset

README = REPO / "README.md"
MAX_LINES = 150


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def fenced_commands(text: str) -> list[list[str]]:
    """Every command line of the section's fenced shell blocks, split as the shell would."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_is_at_most_150_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_every_link_into_docs_leads_to_a_page_and_heading_that_exist():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target, anchor in re.findall(r"\]\(((?:docs/)?[\w-]+\.md)(?:#([\w-]+))?\)", page.read_text(encoding="utf-8")):
            linked = (page.parent / target).resolve()
            assert linked.is_file(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name} links to {target}#{anchor}: no such heading"


def test_the_quick_start_has_the_first_run_with_a_data_dir():
    commands = fenced_commands(section(README.read_text(encoding="utf-8"), "Quick start"))
    assert [words[:2] for words in commands] == [["petseg", "download"], ["petseg", "train"]]
    assert all("--data-dir" in words for words in commands)


@pytest.mark.slow
def test_the_quick_start_runs_as_written_on_generated_data(tmp_path):
    """Each fenced command of the quick start, word for word, in a directory whose data/oxford-iiit-pet
    holds a generated dataset (so `download` finds it complete), then the evaluation the section names."""
    readme = README.read_text(encoding="utf-8")
    quick_start = section(readme, "Quick start")
    data_dir = re.search(r"--data-dir (\S+)", quick_start).group(1)
    make_dataset(tmp_path / data_dir)
    for words in fenced_commands(quick_start):
        assert words[0] == "petseg"
        result = run_cli(*words[1:], cwd=tmp_path, timeout=1800)
        assert result.returncode == 0, f"{shlex.join(words)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    evaluation = re.search(r"`(petseg evaluate [^`]+)`", quick_start).group(1)
    result = run_cli(*shlex.split(evaluation)[1:], cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test" in result.stdout.lower()
