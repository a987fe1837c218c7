"""``petseg machine``: what train's auto settings decide here, and why; and ``train`` checks the user's
input before it measures anything."""

from __future__ import annotations

import pytest

from conftest import invoke_cli
from petseg_cli.machine.probe import CACHE_FILE


@pytest.mark.slow  # a real measurement: two models built, 8 steps
def test_machine_shows_each_decision_with_its_figures_and_the_cache(tmp_path):
    cache = tmp_path / "cache"
    result = invoke_cli("machine", "--model", "resnet34-unet", "--image-size", "32", "-b", "2", cwd=tmp_path,
                        env={"XDG_CACHE_HOME": str(cache), "PETSEG_PRECISION": ""})  # auto, as a user has it
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "what auto decides" in text and "resnet34-unet" in text and "32px" in text
    assert str(cache / "petseg" / CACHE_FILE) in text.replace("\n", "")
    assert "threads" in text and "loader workers" in text and "allocator" in text
    line = next(line for line in text.splitlines() if line.startswith("resnet34-unet at 32px: precision "))
    assert "compile auto: " in line
    assert "median of 3 rounds" in line or "no native bf16" in line  # measured, or nothing to measure here


def test_machine_refuses_an_unknown_model_or_size_in_one_line(tmp_path):
    for args, said in ((["--model", "vgg"], "unknown model 'vgg'"), (["--image-size", "100"], "multiple of 32")):
        result = invoke_cli("machine", *args, cwd=tmp_path)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_train_checks_the_data_directory_before_measuring_anything(tmp_path):
    cache = tmp_path / "cache"
    result = invoke_cli("train", "--data-dir", str(tmp_path / "nonexistent"), "-e", "1", cwd=tmp_path,
                        env={"XDG_CACHE_HOME": str(cache), "PETSEG_PRECISION": ""})  # auto: it would measure
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert not (cache / "petseg" / CACHE_FILE).exists() and not (cache / "petseg" / "inductor").exists()
    assert not (tmp_path / "runs").exists()
