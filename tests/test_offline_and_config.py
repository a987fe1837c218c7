"""Offline download fails at once and says what to do; paths in a config file are relative to it."""

import time
from pathlib import Path

from conftest import invoke_cli, run_cli
from petseg_cli.config.settings import load_settings


def test_download_of_a_name_that_does_not_resolve_fails_at_once_and_leaves_no_directory(tmp_path):
    started = time.monotonic()
    # .invalid never resolves (RFC 6761): as on a machine with no network
    result = run_cli("download", "--data-dir", "new/deeper/pets", "--mirror", "http://pets.invalid/", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "cannot resolve pets.invalid" in result.stderr and "looks offline" in result.stderr
    assert "--mirror file://" in result.stderr and "PETSEG_MIRROR" in result.stderr
    assert "retry" not in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 30  # no back-off: the first retry alone would wait 2 s, all three 14 s
    assert list(tmp_path.iterdir()) == []  # new/deeper was not there before: it is not there after


def test_download_keeps_a_directory_that_was_there(tmp_path):
    (tmp_path / "mine").mkdir()
    result = run_cli("download", "--data-dir", "mine/pets", "--mirror", "http://pets.invalid/", cwd=tmp_path)
    assert result.returncode == 1 and (tmp_path / "mine").is_dir()


def test_relative_paths_in_a_config_file_are_relative_to_that_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "petseg.toml").write_text('[data]\ndata_dir = "pets"\n[train]\nruns_dir = "experiments"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("../project/petseg.toml"))
    assert Path(settings.data.data_dir) == project / "pets"
    assert Path(settings.train.runs_dir) == project / "experiments"
    flags = load_settings(Path("../project/petseg.toml"), {"data": {"data_dir": "here"}})
    assert flags.data.data_dir == "here"  # a flag is relative to the current directory, as always


def test_config_in_the_current_directory_keeps_paths_as_written(tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text('[data]\ndata_dir = "pets"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings().data.data_dir == "pets"


def test_missing_data_dir_from_a_config_file_is_shown_absolute(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "petseg.toml").write_text('[data]\ndata_dir = "pets"\n')
    result = invoke_cli("train", "--config", "project/petseg.toml", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"data directory {project / 'pets'} does not exist" in result.stderr
