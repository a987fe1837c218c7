"""README.md stays short and true: its first block is the two commands that try petseg and test it (the first's
`petseg` parts run on the demo set), its full-dataset section runs as written (on generated data where it says
the dataset is), and every link into docs/ leads to a page and a heading that exist."""

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, invoke_cli, run_cli
from petseg_cli.data.demo_set import demo_dir
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


def first_block() -> list[list[list[str]]]:
    """The README's first fenced block: each line's commands (split at ``&&``)."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL).group(1)
    lines = []
    for line in block.splitlines():
        words, commands = shlex.split(line), [[]]
        for word in words:
            commands.append([]) if word == "&&" else commands[-1].append(word)
        lines.append(commands)
    return lines


def test_the_first_block_installs_and_trains_on_the_demo_then_installs_and_runs_the_tests():
    demo, tests = first_block()
    assert [words[:2] for words in demo] == [["pip", "install"], ["petseg", "train"], ["petseg", "evaluate"]]
    assert demo[1][demo[1].index("--data-dir") + 1] == "demo"
    assert demo[2][2] == "runs/" + demo[1][demo[1].index("--name") + 1]  # it scores the run just trained
    assert tests[0][:3] == ["pip", "install", "-e"] and "test" in re.split(r"[\[\],]", tests[0][3])
    assert tests[1:] == [["python", "-m", "pytest"]]


@pytest.mark.slow
def test_the_first_blocks_petseg_commands_run_on_the_demo_set(tmp_path):
    """The first command's `petseg` parts as written but for 1 epoch at 32 px (the README's take a minute), in a
    directory without `demo` (in-process: no interpreter to start): the run trains on the installed demo set and
    scores its 9 test photos; from another directory, its 3 val photos."""
    demo = first_block()[0]
    train, evaluate = demo[1], demo[2]
    for flag, value in (("-e", "1"), ("--image-size", "32")):
        train[train.index(flag) + 1] = value
    result = invoke_cli(*train[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "18 train / 3 val images" in result.stderr + result.stdout
    result = invoke_cli(*evaluate[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / evaluate[2]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = invoke_cli("evaluate", str(run_dir), "--split", "val", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(run_dir.glob("eval-*.json"))]
    scored = {r["split"]: (r["images"], Path(r["settings"]["data_dir"])) for r in records}
    assert scored == {"test": (9, demo_dir()), "val": (3, demo_dir())}


def test_the_full_dataset_section_has_the_first_run_with_a_data_dir():
    commands = fenced_commands(section(README.read_text(encoding="utf-8"), "The full dataset"))
    assert [words[:2] for words in commands] == [["petseg", "download"], ["petseg", "train"]]
    assert all("--data-dir" in words for words in commands)


@pytest.mark.slow
def test_the_full_dataset_section_runs_as_written_on_generated_data(tmp_path):
    """Each fenced command of the full-dataset section, word for word, in a directory whose data/oxford-iiit-pet
    holds a generated dataset (so `download` finds it complete), then the evaluation the section names."""
    readme = README.read_text(encoding="utf-8")
    quick_start = section(readme, "The full dataset")
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
