"""--compile auto/on/off: the decision from the machine's facts, its record in config.toml, inductor's
cache in petseg's cache directory, and training, validation, checkpoints and resume with compile on."""

import json
import tomllib

import pytest
import torch

from conftest import invoke_cli, run_cli
from petseg_cli.machine.compile import MIN_STEPS, decide_compile, has_cxx_compiler, use_petseg_cache
from petseg_cli.base.errors import UsageError
from petseg_cli.config.settings import Settings, load_settings, validate
from run_files import assert_plain_checkpoints
from synthetic import make_dataset

LONG = MIN_STEPS * 4


def test_auto_compiles_on_cuda_and_on_cpus_with_bf16_matrix_units_for_long_runs():
    on_gpu = decide_compile("auto", "cuda", "bf16", fast_bf16=True, steps=LONG)
    assert on_gpu.enabled and "CUDA" in on_gpu.reason and str(LONG) in on_gpu.reason
    assert decide_compile("auto", "cuda", "fp16", fast_bf16=False, steps=LONG).enabled
    on_cpu = decide_compile("auto", "cpu", "bf16", fast_bf16=True, steps=LONG)
    assert on_cpu.enabled and "bf16 matrix units" in on_cpu.reason


def test_auto_stays_off_for_fp32_on_a_cpu_bf16_without_amx_and_short_runs():
    fp32 = decide_compile("auto", "cpu", "fp32", fast_bf16=True, steps=LONG)
    assert not fp32.enabled and "fp32 on a CPU" in fp32.reason
    no_amx = decide_compile("auto", "cpu", "bf16", fast_bf16=False, steps=LONG)
    assert not no_amx.enabled and "no bf16 matrix units" in no_amx.reason
    short = decide_compile("auto", "cpu", "bf16", fast_bf16=True, steps=MIN_STEPS - 1)
    assert not short.enabled and f"{MIN_STEPS - 1} training steps" in short.reason
    assert decide_compile("auto", "cpu", "bf16", fast_bf16=True, steps=MIN_STEPS).enabled
    assert not decide_compile("auto", "cuda", "bf16", fast_bf16=True, steps=10).enabled
    no_cxx = decide_compile("auto", "cpu", "bf16", fast_bf16=True, steps=LONG, cxx_compiler=False)
    assert not no_cxx.enabled and "C++ compiler" in no_cxx.reason
    assert not decide_compile("auto", "mps", "fp32", fast_bf16=False, steps=LONG).enabled


def test_compile_flags_force_it_either_way():
    assert decide_compile(True, "cpu", "fp32", fast_bf16=False, steps=1).enabled
    off = decide_compile(False, "cuda", "bf16", fast_bf16=True, steps=LONG)
    assert not off.enabled and "turned off" in off.reason
    with pytest.raises(UsageError, match="needs a C\\+\\+ compiler"):
        decide_compile(True, "cpu", "bf16", fast_bf16=True, steps=LONG, cxx_compiler=False)


def test_cxx_compiler_is_found_from_cxx_or_the_path(tmp_path):
    assert not has_cxx_compiler({"CXX": str(tmp_path / "no-such-compiler")})
    fake = tmp_path / "my-c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert has_cxx_compiler({"CXX": str(fake)})


def test_compile_in_petseg_toml_is_true_false_or_auto(tmp_path):
    assert Settings().train.compile == "auto"
    for value, expected in (("true", True), ("false", False), ('"auto"', "auto")):
        (tmp_path / "petseg.toml").write_text(f"[train]\ncompile = {value}\n")
        assert validate(load_settings(tmp_path / "petseg.toml")).train.compile == expected
    (tmp_path / "petseg.toml").write_text('[train]\ncompile = "fast"\n')
    with pytest.raises(UsageError, match='train.compile must be one of True, False, auto'):
        validate(load_settings(tmp_path / "petseg.toml"))


def test_inductor_cache_goes_under_petsegs_cache_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    environ: dict[str, str] = {}
    directory = use_petseg_cache(environ)
    assert directory == tmp_path / "xdg" / "petseg" / "inductor" and directory.is_dir()
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(directory)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torchs = {"TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}  # what importing torch._dynamo fills in
    assert use_petseg_cache(torchs) == directory and torchs["TORCHINDUCTOR_CACHE_DIR"] == str(directory)
    mine = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")}
    assert use_petseg_cache(mine) == tmp_path / "mine" and mine["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_auto_decision_and_reason_are_recorded_in_config(tmp_path):
    # 1 epoch of a few steps: auto stays off (too short to repay compiling) and says why.
    data = make_dataset(tmp_path / "pets", n_trainval=8, n_test=1, size=(32, 32))
    result = invoke_cli("train", "--model", "resnet34-unet", "--image-size", "32", "-b", "6", "-e", "1",
                        "--data-dir", str(data), "--name", "auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "runs" / "auto" / "config.toml").read_text())
    assert config["train"]["compile"] == "auto"
    assert config["run"]["compile"] is False
    assert config["run"]["compile_reason"].startswith("auto: ")
    assert "compiling" not in result.stderr


# -- compile on, for real (slow: inductor compiles the training and validation graphs) -------------
# unet: the smallest graph to compile (no BatchNorm, no attention); fp32, so that auto would say no.
COMPILED = ["--model", "unet", "--image-size", "32", "-b", "6", "--compile", "--precision", "fp32"]
COMPILE_TIMEOUT = 3600  # a cold compilation on a loaded 2-core machine takes many minutes


@pytest.mark.slow
def test_compiled_training_validates_and_saves_plain_checkpoints(dataset, tmp_path):
    """Compiled for real (inductor generates and builds its kernels): the training and validation steps
    compile, inductor's cache is petseg's, and the checkpoints load into a plain model. (A compiled run's
    resume is test_decision_matrix's [compiled] branch, and compile over DDP under torchrun is test_elastic's
    compiled restart, on torch's aot_eager backend: the same dynamo graphs without a second cold build of
    inductor's kernels.)"""
    cache_home = tmp_path / "cache-home"  # a user cache of its own: inductor starts cold, as on a first run
    env = {"XDG_CACHE_HOME": str(cache_home)}
    first = run_cli("train", *COMPILED, "-e", "1", "--data-dir", str(dataset), "--name", "c",
                    cwd=tmp_path, env=env, timeout=COMPILE_TIMEOUT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiling the training step" in first.stderr and "compiled the training step at 32 px in" in first.stderr
    assert "compiled the validation step in" in first.stderr
    run = tmp_path / "runs" / "c"
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["run"]["compile"] is True and "asked for" in config["run"]["compile_reason"]
    assert any((cache_home / "petseg" / "inductor").iterdir())  # inductor's cache is petseg's
    assert_plain_checkpoints(run, "unet")
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1] and torch.isfinite(torch.tensor(history["epochs"][0]["val_dice"]))
