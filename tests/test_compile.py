"""--compile auto/on/off: the decision from the machine's facts, its record in config.toml, inductor's
cache in petseg's cache directory, and training, validation, checkpoints and resume with compile on."""

import json
import os
import tomllib

import pytest
import torch

from conftest import cli_environment, invoke_cli, run_cli
from petseg_cli.machine.compile import MIN_STEPS, decide_compile, has_cxx_compiler, use_petseg_cache
from petseg_cli.base.errors import UsageError
from petseg_cli.config.settings import Settings, load_settings, validate
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


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """One user cache for this module's compiled runs: the first compiles cold, the later ones reuse
    what inductor kept (its generated kernels), as a user's second run does."""
    return tmp_path_factory.mktemp("cache-home")


@pytest.mark.slow
def test_compiled_training_validates_and_saves_plain_checkpoints(dataset, tmp_path, cache_home):
    """Compiled for real (inductor generates and builds its kernels): the training and validation steps
    compile, inductor's cache is petseg's, and the checkpoints load into a plain model. (A compiled run's
    resume is test_decision_matrix's [compiled] branch and test_elastic's compiled restart, on torch's
    aot_eager backend: the same dynamo graphs without a second cold build of inductor's kernels.)"""
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
    assert_plain_checkpoints(run)
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1] and torch.isfinite(torch.tensor(history["epochs"][0]["val_dice"]))


def assert_plain_checkpoints(run):
    from petseg_cli.models import build_model

    for name in ("best.pth", "last.pth"):
        state = torch.load(run / name, weights_only=True)["state_dict"]
        assert not [k for k in state if "_orig_mod" in k or k.startswith("module.")]
        build_model("unet").load_state_dict(state)  # loads into a plain model, strict


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs fork here")
def test_compiled_training_in_two_processes_saves_plain_checkpoints(dataset, tmp_path, cache_home):
    """torch.compile over DDP under torchrun: dynamo captures the DDP-wrapped model (split where DDP's
    gradient buckets end) and the checkpoints stay plain. Its graphs run with torch's aot_eager backend
    (TORCH_COMPILE_OVERRIDE_BACKENDS): everything but inductor's kernels, which the test above builds;
    two cold inductor compilations at once would double this module's minute of CPU."""
    import subprocess
    import sys

    env = cli_environment({"XDG_CACHE_HOME": str(cache_home), "OMP_NUM_THREADS": "1", "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "petseg_cli",
               "train", *COMPILED, "-e", "1", "--data-dir", str(dataset), "--name", "d"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled the training step at 32 px in" in result.stderr and "compiled the validation step in" in result.stderr
    run = tmp_path / "runs" / "d"
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["run"]["compile"] is True and config["run"]["processes"] == 2
    assert_plain_checkpoints(run)
    assert json.loads((run / "history.json").read_text())["summary"]["stop_reason"] == "completed"
