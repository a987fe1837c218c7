"""Hardening, damaged runs: evaluate, compare and summary end a bad run in one line, never a traceback."""

import shutil

import pytest

from conftest import invoke_cli


def damaged_copy(run, base, how):
    """A copy of the real run ``run`` with one thing broken."""
    copy = base / how
    shutil.copytree(run, copy)
    if how == "no-best":
        (copy / "best.pth").unlink()
    elif how == "truncated-best":
        data = (copy / "best.pth").read_bytes()
        (copy / "best.pth").write_bytes(data[: len(data) // 3])
    elif how == "unknown-model":
        config = (copy / "config.toml").read_text()
        (copy / "config.toml").write_text(config.replace('name = "resnet34-unet"', 'name = "segformer"'))
    elif how == "other-models-weights":
        config = (copy / "config.toml").read_text()
        (copy / "config.toml").write_text(config.replace('name = "resnet34-unet"', 'name = "unet"'))
    elif how == "history-not-json":
        (copy / "history.json").write_text("{ this is not json")
    return copy


# (how, command, expected exit code, words the one line must hold)
ROWS = [
    ("no-best", "evaluate", 1, ["best.pth does not exist, and the run has finished", "--weights last"]),
    ("truncated-best", "evaluate", 1, ["best.pth cannot be read", "truncated"]),
    ("unknown-model", "evaluate", 1, ["config.toml", "unknown model 'segformer'"]),
    ("unknown-model", "summary", 1, ["config.toml", "unknown model 'segformer'"]),
    ("other-models-weights", "evaluate", 1, ["does not fit the unet model", "saved for resnet34-unet", "missing, e.g. inc.0.weight"]),
    ("history-not-json", "compare", 1, ["history.json is not valid JSON", "no petseg run to compare"]),
    ("history-not-json", "summary", 1, ["history.json is not valid JSON"]),
]


@pytest.mark.parametrize(("how", "command", "code", "words"), ROWS, ids=[f"{r[1]}-{r[0]}" for r in ROWS])
def test_damaged_run(how, command, code, words, tiny_run, tmp_path):
    run = damaged_copy(tiny_run, tmp_path, how)
    result = invoke_cli(command, str(run), cwd=tmp_path)
    assert result.returncode == code, result.stderr
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_run_without_best_weights_still_compares_and_summarises(tiny_run, tmp_path):
    run = damaged_copy(tiny_run, tmp_path, "no-best")
    for command in ("compare", "summary"):
        result = invoke_cli(command, str(run), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "no-best" in result.stdout
