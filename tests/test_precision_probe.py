"""precision auto by measurement: alternated rounds after a warm-up, a winner only when it is ahead by a
clear margin in every round (else the hardware's rule, said so), the load it was measured under, and a
cache that keeps only what an idle machine measured, says "cached", and can be measured again."""

import json

import pytest
import torch
from torch import nn

from petseg_cli.machine import probe
from petseg_cli.machine.probe import (
    CACHE_FILE, MARGIN, ROUNDS, BUSY_SHARE, LoadMeter, busy_cpu_seconds, faster_precision, measure_precision, probe_batch,
    unclear_default,
)

CPU = torch.device("cpu")


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def loss(logits, masks):
    return nn.functional.cross_entropy(logits.float(), masks)


def meter_of(others_share: float, cores: int = 2):
    """A LoadMeter whose clocks say the other processes used ``others_share`` of the cores over 10 s."""
    calls = {"busy": 0}

    def busy_seconds():
        calls["busy"] += 1
        return 100.0 if calls["busy"] == 1 else 100.0 + 10.0 * cores * others_share + 5.0  # 5 s: this process's

    own = iter([0.0, 5.0])
    wall = iter([0.0, 10.0])
    return lambda: LoadMeter(busy_seconds, lambda: next(own), lambda: next(wall), cores)


def measure(tmp_path, meter, remeasure=False, key="machine | tiny | 32px | batch 2"):
    return measure_precision(tiny_model, loss, 32, 2, CPU, True, key, tmp_path, remeasure=remeasure, meter=meter)


def test_a_candidate_wins_only_when_ahead_by_the_margin_in_every_round():
    clear = [{"fp32": 1.0, "bf16": 0.5}] * ROUNDS
    assert faster_precision(clear) == "bf16"
    assert faster_precision([{"fp32": 0.5, "bf16": 1.0}] * ROUNDS) == "fp32"
    one_noisy_round = [{"fp32": 1.0, "bf16": 0.5}, {"fp32": 1.0, "bf16": 0.5}, {"fp32": 1.0, "bf16": 1.0 / MARGIN * 1.01}]
    assert faster_precision(one_noisy_round) is None  # bf16's median is far ahead, but not in every round


def test_the_probe_times_alternated_rounds_at_the_runs_batch_or_8(tmp_path):
    assert (probe_batch(16), probe_batch(4), probe_batch(0)) == (8, 4, 1)
    verdict = measure(tmp_path, meter_of(0.0))
    assert len(verdict.rounds) == ROUNDS and all(set(r) == {"fp32", "bf16"} for r in verdict.rounds)
    assert verdict.batch == 2 and set(verdict.seconds) == {"fp32", "bf16"}
    if verdict.rule:  # not ahead in every round: the hardware's rule (bf16 is native here: bf16), said so
        assert verdict.precision == "bf16" and "bf16, the default for this CPU" in verdict.describe()
    else:
        assert verdict.precision == faster_precision(verdict.rounds)


def test_an_idle_verdict_is_cached_and_says_so_and_remeasure_measures_again(tmp_path):
    first = measure(tmp_path, meter_of(0.0))
    assert not first.cached and not first.load.busy and "idle" in first.describe()
    again = measure(tmp_path, meter_of(0.9))  # from the cache: nothing measured, whatever the load now
    assert again.cached and "cached, measured" in again.describe()
    assert (again.precision, again.seconds, again.rounds) == (first.precision, first.seconds, first.rounds)
    remeasured = measure(tmp_path, meter_of(0.0), remeasure=True)
    assert not remeasured.cached and remeasured.measured_at >= first.measured_at


def test_a_verdict_measured_on_a_busy_machine_is_used_once_and_not_cached(tmp_path):
    busy = measure(tmp_path, meter_of(BUSY_SHARE + 0.25))
    assert busy.load.busy and "busy: other processes used 50% of 2 cores" in busy.describe()
    assert not (tmp_path / CACHE_FILE).exists()
    assert not measure(tmp_path, meter_of(0.0)).cached  # measured again, on an idle machine this time


def test_a_stale_verdict_of_the_earlier_probe_is_measured_again(tmp_path):
    key = "machine | tiny | 32px | batch 2"
    (tmp_path / CACHE_FILE).write_text(json.dumps({key: {"precision": "fp32", "seconds": {"fp32": 10.85, "bf16": 15.79}}}))
    verdict = measure(tmp_path, meter_of(0.0), key=key)
    assert not verdict.cached and len(verdict.rounds) == ROUNDS
    assert json.loads((tmp_path / CACHE_FILE).read_text())["version"] == probe.CACHE_VERSION


def test_the_load_is_the_other_processes_cpu_over_the_cores(tmp_path):
    assert meter_of(0.6)().load().others == pytest.approx(0.6)
    assert meter_of(0.0)().load().others == 0.0  # this process's own CPU is not load
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 7 3 2 45 0 0\ncpu0 100 0 50 1000 7 3 2 45 0 0\n")
    import os

    assert busy_cpu_seconds(stat) == pytest.approx(200 / os.sysconf("SC_CLK_TCK"))  # iowait and idle are not busy
    stat.write_text("intr 1 2 3\n")
    assert busy_cpu_seconds(stat) is None


def test_when_no_candidate_is_ahead_in_every_round_the_native_reduced_precision_is_the_default():
    """The rule for an unclear measurement (a busy machine, or two precisions within the margin): bf16
    wherever it is native, AVX512-BF16 without matrix units included; fp16 on a GPU without bf16; else fp32."""
    assert unclear_default("cpu", native_bf16=True) == "bf16"
    assert unclear_default("cpu", native_bf16=False) == "fp32"
    assert unclear_default("cuda", native_bf16=True) == "bf16"
    assert unclear_default("cuda", native_bf16=False) == "fp16"


def test_a_cpu_without_native_bf16_keeps_fp32_unmeasured(tmp_path):
    verdict = measure_precision(tiny_model, loss, 32, 2, CPU, False, "old cpu", tmp_path)
    assert verdict.precision == "fp32" and verdict.seconds == {} and not (tmp_path / CACHE_FILE).exists()
    assert "no native bf16" in verdict.describe()


def test_a_resumed_run_keeps_the_precision_it_trained_in_unless_remeasured():
    from petseg_cli.machine.distributed import Context
    from petseg_cli.machine.precision import bf16_support
    from petseg_cli.machine.probe import decide_precision
    from petseg_cli.config.settings import load_settings

    settings = load_settings(overrides={"train": {"precision": "auto"}})
    precision, verdict = decide_precision(settings, CPU, Context.from_env(), kept="fp32")
    assert precision.name == "fp32" and "kept the precision the run trained in" in verdict.describe()
    precision, verdict = decide_precision(settings, CPU, Context.from_env(), kept="bf16")
    native, _ = bf16_support(CPU)
    assert precision.name == ("bf16" if native else "fp32")  # kept where it can run; never emulated bf16
    forced = decide_precision(load_settings(overrides={"train": {"precision": "fp32"}}), CPU, Context.from_env(), kept="bf16")
    assert forced[0].name == "fp32" and forced[1] is None  # a precision given is never overridden


def test_with_a_budget_the_probe_stops_once_its_steps_would_not_fit_takes_the_rule_and_caches_nothing(tmp_path):
    key = "machine | tiny | 32px | batch 2"
    short = measure_precision(tiny_model, loss, 32, 2, CPU, True, key, tmp_path, meter=meter_of(0.0), most_seconds=1e-9)
    assert short.precision == unclear_default("cpu", True) and not short.seconds and not short.rounds
    assert short.describe().startswith("bf16 (not measured: its steps would take more than the 0 s it may use of the time budget (idle")
    assert short.describe().endswith("; bf16, the default for this CPU)")
    assert not (tmp_path / CACHE_FILE).exists()
    enough = measure_precision(tiny_model, loss, 32, 2, CPU, True, key, tmp_path, meter=meter_of(0.0), most_seconds=1e9)
    assert len(enough.rounds) == ROUNDS and (tmp_path / CACHE_FILE).exists()  # measured whole on an idle machine


class Steps:
    """A candidate whose every step takes ``seconds`` (by its own word), counted."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.count = seconds, 0

    def step(self) -> float:
        self.count += 1
        return self.seconds


def test_the_probe_stops_as_soon_as_its_steps_so_far_say_the_rest_would_not_fit():
    # 2 warm-ups and 3 rounds of 2 candidates: 8 steps of 1 s
    fits = {"fp32": Steps(1.0), "bf16": Steps(1.0)}
    assert probe.time_rounds(fits, most_seconds=8.0) == [{"fp32": 1.0, "bf16": 1.0}] * ROUNDS
    too_slow = {"fp32": Steps(1.0), "bf16": Steps(1.0)}
    assert probe.time_rounds(too_slow, most_seconds=7.5) is None
    assert too_slow["fp32"].count == 1 and too_slow["bf16"].count == 0  # the first step said so
    slower_later = {"fp32": Steps(1.0), "bf16": Steps(3.0)}  # 1 + 3 s, then 6 more steps at about 2 s
    assert probe.time_rounds(slower_later, most_seconds=15.0) is None and slower_later["bf16"].count == 1
