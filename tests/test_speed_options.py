import tomllib

import pytest

from conftest import invoke_cli, run_cli
from petseg_cli.machine import allocator
from petseg_cli.data.cache import CACHE_DIRNAME
from petseg_cli.machine.devices import choose_workers, usable_cores
from petseg_cli.machine.distributed import Context
from petseg_cli.base.errors import UsageError
from synthetic import make_dataset
from petseg_cli.machine.precision import (
    Precision,
    choose_channels_last,
    choose_precision,
    cpu_bf16_is_fast,
    cpu_has_native_bf16,
    cuda_has_native_bf16,
    read_cpu_flags,
)
from petseg_cli.machine.probe import faster_precision, unclear_default

SMALL = ["--image-size", "32", "-b", "6", "--model", "resnet34-unet", "-e", "1"]  # the cheaper model per image
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f"}  # AVX-512 without its BF16 extension


def test_precision_auto_picks_fp32_on_a_cpu_without_native_bf16():
    assert not cpu_has_native_bf16(AVX2_ONLY)
    assert choose_precision("auto", "cpu", cpu_has_native_bf16(AVX2_ONLY)) == "fp32"


def test_precision_auto_picks_bf16_where_the_hardware_has_it():
    assert choose_precision("auto", "cpu", cpu_bf16_is_fast(AVX2_ONLY | {"avx512_bf16", "amx_bf16"})) == "bf16"
    assert choose_precision("auto", "cuda", cuda_has_native_bf16((9, 0))) == "bf16"  # H100
    assert choose_precision("auto", "cuda", cuda_has_native_bf16((8, 0))) == "bf16"  # A100


def test_precision_auto_keeps_fp32_on_a_cpu_with_avx512_bf16_but_no_amx():
    # bf16 instructions, so not emulated, but its bf16 convolutions measured slower than fp32
    flags = AVX2_ONLY | {"avx512_bf16"}
    assert cpu_has_native_bf16(flags) and not cpu_bf16_is_fast(flags)
    assert choose_precision("auto", "cpu", cpu_bf16_is_fast(flags)) == "fp32"
    forced = Precision("bf16", "cpu", native_bf16=True, fast_bf16=False)
    assert not forced.emulated


def test_precision_auto_picks_fp16_on_gpus_older_than_ampere():
    assert choose_precision("auto", "cuda", cuda_has_native_bf16((7, 0))) == "fp16"  # V100
    assert choose_precision("auto", "cuda", cuda_has_native_bf16((7, 5))) == "fp16"  # T4


def test_explicit_precision_is_kept_and_fp16_on_a_cpu_is_refused():
    assert choose_precision("bf16", "cpu", fast_bf16=False) == "bf16"
    assert Precision("bf16", "cpu", native_bf16=False).emulated  # train warns that it will be slow
    assert not Precision("bf16", "cuda", native_bf16=True).emulated
    assert choose_precision("fp32", "cuda", fast_bf16=True) == "fp32"
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", "cpu", fast_bf16=False)


def test_channels_last_auto_is_on_for_gpus_and_reduced_precision_off_for_fp32_on_a_cpu():
    assert choose_channels_last("auto", "cuda", "fp32") and choose_channels_last("auto", "cuda", "bf16")
    assert choose_channels_last("auto", "cpu", "bf16")
    assert not choose_channels_last("auto", "cpu", "fp32")
    assert choose_channels_last(True, "cpu", "fp32") and not choose_channels_last(False, "cuda", "bf16")


def test_channels_last_in_petseg_toml_is_true_false_or_auto(tmp_path):
    from petseg_cli.config.settings import load_settings, validate

    for value, expected in (("true", True), ("false", False), ('"auto"', "auto")):
        (tmp_path / "petseg.toml").write_text(f"[train]\nchannels_last = {value}\n")
        assert validate(load_settings(tmp_path / "petseg.toml")).train.channels_last == expected
    (tmp_path / "petseg.toml").write_text('[train]\nchannels_last = "sometimes"\n')
    with pytest.raises(UsageError, match='channels_last must be true, false or "auto"'):
        validate(load_settings(tmp_path / "petseg.toml"))
    (tmp_path / "petseg.toml").write_text("[train]\nchannels_last = 1\n")
    with pytest.raises(UsageError, match="channels_last must be bool or str, got int 1"):
        load_settings(tmp_path / "petseg.toml")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_has_native_bf16(read_cpu_flags(arm))
    assert read_cpu_flags(tmp_path / "missing") == set()


def test_workers_are_chosen_from_cores_and_device():
    assert choose_workers(-1, cores=2, device_type="cpu") == 0  # the model's step needs both cores
    assert choose_workers(-1, cores=32, device_type="cpu") == 4
    assert choose_workers(-1, cores=16, device_type="cuda") == 8
    assert choose_workers(-1, cores=16, device_type="cuda", processes_per_machine=8) == 1
    assert choose_workers(-1, cores=4, device_type="cuda", processes_per_machine=8) == 0
    assert choose_workers(3, cores=2, device_type="cpu") == 3  # an explicit --workers wins


def test_global_batch_must_divide_among_processes():
    assert Context(rank=1, world_size=4).per_rank_batch(32) == 8
    with pytest.raises(UsageError, match="--batch-size 6 is the global batch"):
        Context(world_size=4).per_rank_batch(6)


def test_distributed_context_comes_from_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert Context.from_env(env) == Context(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert not Context.from_env({}).enabled and Context.from_env({}).is_main


@pytest.mark.slow
def test_tcmalloc_is_preloaded_once_unless_turned_off(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    assert allocator.find_tcmalloc((str(tmp_path / "none"), str(tmp_path))) == library
    assert allocator.find_tcmalloc((str(tmp_path / "none"),)) is None

    env = allocator.preload_environment({"LD_PRELOAD": "libother.so", "PATH": "/bin"}, library)
    assert env["LD_PRELOAD"] == f"{library} libother.so" and env["PATH"] == "/bin"
    assert allocator.preload_environment(env, library) is None  # the re-executed process stops there
    assert allocator.preload_environment({"PETSEG_ALLOCATOR": "system"}, library) is None
    assert allocator.preload_environment({}, None) is None


def expected_allocator(environment: dict[str, str]) -> str:
    if environment.get("PETSEG_ALLOCATOR") == "system":
        return "glibc"
    return "tcmalloc" if allocator.find_tcmalloc() else "glibc (kept freed memory)"


@pytest.mark.slow
def test_speed_defaults_resolve_and_are_recorded(dataset, tmp_path):
    result = run_cli("train", *SMALL, "--data-dir", str(dataset), "--name", "defaults", cwd=tmp_path,
                     env={"PETSEG_PRECISION": ""})  # every default, precision auto too
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "runs" / "defaults" / "config.toml").read_text())
    assert config["train"]["precision"] == "auto" and config["train"]["channels_last"] == "auto"
    assert config["train"]["compile"] == "auto" and config["data"]["cache"] is True
    assert config["train"]["workers"] == -1
    # auto kept what its recorded rounds say, else (no candidate ahead in every round) the precision this
    # CPU computes natively, and says which (fp32 alone where bf16 is not native: nothing measured)
    rounds = config["run"].get("precision_measured_rounds") or [{"fp32": 1.0}]
    winner = faster_precision(rounds)
    unclear = unclear_default("cpu", cpu_has_native_bf16(read_cpu_flags()))
    assert config["run"]["precision"] == (winner or unclear)
    if "precision_measured_rounds" in config["run"]:
        assert (config["run"]["precision_decided_by"] == "measurement") == (winner is not None)
    assert ("bf16" in rounds[0]) == cpu_has_native_bf16(read_cpu_flags())
    assert config["run"]["channels_last"] is choose_channels_last("auto", "cpu", config["run"]["precision"])
    assert config["run"]["workers"] == choose_workers(-1, usable_cores(), "cpu")
    assert config["run"]["processes"] == 1
    assert config["run"]["allocator"] == expected_allocator({})


@pytest.mark.slow
def test_speed_options_turn_each_default_off_and_are_recorded(tmp_path):
    dataset = make_dataset(tmp_path / "pets", n_trainval=14, n_test=1, size=(32, 32))
    env = {"PETSEG_ALLOCATOR": "system"}
    args = ["--precision", "fp32", "--no-channels-last", "--no-cache", "--workers", "1"]
    result = run_cli("train", *SMALL, *args, "--data-dir", str(dataset), "--name", "off", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "runs" / "off" / "config.toml").read_text())
    assert config["train"]["precision"] == "fp32" and config["train"]["channels_last"] is False
    assert config["data"]["cache"] is False and config["train"]["workers"] == 1
    assert config["run"]["precision"] == "fp32" and config["run"]["workers"] == 1
    assert config["run"]["channels_last"] is False
    assert config["run"]["allocator"] == expected_allocator(env)
    assert not (dataset / CACHE_DIRNAME).exists()


def test_fp16_on_a_cpu_is_refused_with_the_option_to_fix(dataset, tmp_path):
    result = invoke_cli("train", *SMALL, "--precision", "fp16", "--data-dir", str(dataset), cwd=tmp_path)
    assert result.returncode == 2 and "--precision fp16 needs a CUDA GPU" in result.stderr
    bad = invoke_cli("train", *SMALL, "--precision", "half", "--data-dir", str(dataset), cwd=tmp_path)
    assert bad.returncode == 2 and "--precision must be one of auto, fp32, bf16, fp16" in bad.stderr
