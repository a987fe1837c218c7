"""A run name is one path component: anything else is one line, exit 2, and nothing on disk."""

import pytest

from conftest import invoke_cli
from petseg_cli.run import check_run_name, create_run_dir
from petseg_cli.base.errors import PetsegError

BAD_NAMES = ["a/b", "../x", ".hidden", "..", ".", "", "a\\b", "/abs"]


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden"])
def test_train_refuses_a_name_that_is_not_one_component_and_creates_nothing(name, dataset, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = invoke_cli(
        "train", "--data-dir", str(dataset), "--runs-dir", "runs", "--name", name, "-e", "1", cwd=work
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--name" in lines[0], result.stderr
    assert list(work.iterdir()) == []  # no runs/ inside, no ../x beside
    assert list(tmp_path.iterdir()) == [work]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_run_name_refuses(name):
    with pytest.raises(PetsegError) as caught:
        check_run_name(name)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("name", ["unet-bs8", "a.b", "run..2", "x-2"])
def test_check_run_name_accepts_one_component(name):
    check_run_name(name)


def test_create_run_dir_refuses_before_making_anything(tmp_path):
    with pytest.raises(PetsegError):
        create_run_dir(tmp_path / "runs", "../escape", explicit=True)
    assert list(tmp_path.iterdir()) == []
