"""Every command reads petseg.toml (or --config) with the same precedence: defaults < file < environment < flags."""

import shutil

from PIL import Image

from conftest import invoke_cli


def project_with_runs_elsewhere(tiny_run, tmp_path):
    """A project whose petseg.toml keeps runs in ``experiments/``, holding a copy of the tiny run."""
    shutil.copytree(tiny_run, tmp_path / "experiments" / "tiny")
    (tmp_path / "petseg.toml").write_text('[train]\nruns_dir = "experiments"\n')
    Image.new("RGB", (40, 30), (200, 120, 40)).save(tmp_path / "dog.jpg")


def test_infer_looks_for_the_best_run_where_petseg_toml_keeps_runs(tiny_run, tmp_path):
    project_with_runs_elsewhere(tiny_run, tmp_path)
    result = invoke_cli("infer", "dog.jpg", "-o", "dog-mask.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "experiments/tiny" in result.stderr and (tmp_path / "dog-mask.png").is_file()
    # a flag still beats the file
    flag = invoke_cli("infer", "dog.jpg", "-o", "x.png", "--runs-dir", "nowhere", cwd=tmp_path)
    assert flag.returncode == 1 and "nowhere" in flag.stderr


def test_compare_without_runs_compares_every_run_under_the_configured_runs_dir(tiny_run, tmp_path):
    project_with_runs_elsewhere(tiny_run, tmp_path)
    result = invoke_cli("compare", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2 and "tiny" in result.stdout
    other = tmp_path / "other.toml"
    other.write_text('[train]\nruns_dir = "empty"\n')
    none = invoke_cli("compare", "--config", str(other), cwd=tmp_path)
    assert none.returncode == 2 and "no runs under" in none.stderr


def test_evaluate_takes_its_device_from_petseg_toml_and_a_flag_beats_it(tiny_run, tmp_path):
    (tmp_path / "petseg.toml").write_text('[train]\ndevice = "tpu"\n')
    from_file = invoke_cli("evaluate", str(tiny_run), "--at", "training", cwd=tmp_path)
    assert from_file.returncode == 2 and "--device must be auto, cpu, cuda or cuda:N, got 'tpu'" in from_file.stderr
    flag = invoke_cli("evaluate", str(tiny_run), "--at", "training", "--device", "cpu", cwd=tmp_path)
    assert flag.returncode == 0, flag.stderr
