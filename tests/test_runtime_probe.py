"""``--runtime auto``'s decision from synthetic rounds under a driven load meter (no model, no runtime
measured), and the pipeline infer runs its batches through. Cheap: no torch, no model."""

import threading

import pytest

from petseg_cli.machine.probe import LoadMeter
from petseg_cli.predict.pipeline import pipelined
from petseg_cli.predict.runtime_probe import (
    MIN_AGREEMENT, NOT_INSTALLED, PROBE_BATCH, Candidate, candidates, measure_runtime, winner,
)

ORT, OV, OV_BF16 = "onnxruntime fp32", "openvino fp32", "openvino bf16"


def test_candidates_follow_the_file_the_precision_asked_and_the_cpu():
    labels = lambda *args: [c.label for c in candidates(*args)]  # noqa: E731
    assert labels("fp32", None, True, True) == [ORT, OV, OV_BF16]
    assert labels("fp32", None, False, True) == [ORT, OV]  # no native bf16: bf16 is not tried
    assert labels("fp32", "bf16", False, True) == [OV_BF16]  # asked for: only OpenVINO computes it
    assert labels("int8", "auto", True, True) == ["onnxruntime int8", "openvino int8"]  # an int8 file runs as int8
    assert labels("fp32", None, True, False) == [ORT]
    assert labels("int8", "fp32", True, True) == []


def test_a_runtime_wins_only_ahead_by_the_margin_in_every_round_and_with_agreeing_masks():
    rounds = [{ORT: 1.0, OV: 0.8, OV_BF16: 0.4}, {ORT: 1.0, OV: 0.85, OV_BF16: 0.45}, {ORT: 1.0, OV: 0.8, OV_BF16: 0.5}]
    agree = {OV: 1.0, OV_BF16: 0.999}
    assert winner(rounds, agree, ORT) == OV_BF16  # the fastest of those ahead
    assert winner(rounds, {OV: 1.0, OV_BF16: MIN_AGREEMENT - 0.001}, ORT) == OV  # bf16's masks disagree: never chosen
    one_slow_round = [*rounds[:2], {ORT: 1.0, OV: 0.95, OV_BF16: 0.95}]  # both within 10% once
    assert winner(one_slow_round, agree, ORT) is None


class Fake:
    image_size = 32


def driven_meter(others: float, later: float | None = None):
    """LoadMeters whose clocks say the other processes used ``others`` of 2 cores over 10 s (the second and
    later meters made: ``later``, when given)."""
    made = []

    def meter():
        share = others if not made or later is None else later
        made.append(share)
        clock, busy = iter([0.0, 10.0]), iter([100.0, 100.0 + share * 20])
        return LoadMeter(busy_seconds=lambda: next(busy), own_seconds=lambda: 0.0, timer=lambda: next(clock), cores=2)

    return meter


def test_an_idle_verdict_is_cached_and_says_so_a_busy_one_is_not_and_a_busy_machine_measures_nothing(tmp_path):
    options = [Candidate("onnxruntime", "fp32"), Candidate("openvino", "bf16")]
    built = []

    def build(candidate):
        built.append(candidate.label)
        return Fake()

    def timer(predictors, images, reference):
        assert images.shape == (PROBE_BATCH, 32, 32, 3) and list(predictors) == [ORT, OV_BF16]
        return [{ORT: 1.0, OV_BF16: 0.3}] * 3, {OV_BF16: 0.999}

    busy_at_once, built_then = measure_runtime(options, build, "k", tmp_path, meter=driven_meter(0.9), timer=timer)
    assert (busy_at_once.runtime, busy_at_once.precision, busy_at_once.cached) == ("onnxruntime", "fp32", False)
    assert busy_at_once.describe() == ("runtime auto: onnxruntime (fp32): not measured, the machine is busy (busy: other "
                                       "processes used 90% of 2 cores): onnxruntime, measured when it is idle")
    assert built == [] and built_then == {} and not list(tmp_path.iterdir())  # nothing built, nothing cached
    busy, _ = measure_runtime(options, build, "k", tmp_path, meter=driven_meter(0.0, later=0.9), timer=timer)
    assert (busy.runtime, busy.precision, busy.cached) == ("openvino", "bf16", False)  # busy during the rounds
    assert "busy: other processes used 90% of 2 cores" in busy.describe() and not list(tmp_path.iterdir())
    idle, predictors = measure_runtime(options, build, "k", tmp_path, meter=driven_meter(0.0), timer=timer)
    assert set(predictors) == {ORT, OV_BF16} and "openvino bf16 300 ms (masks agree 99.90%)" in idle.describe()
    built.clear()
    again, predictors = measure_runtime(options, build, "k", tmp_path, timer=timer)
    assert again.cached and "cached, measured" in again.describe() and (again.runtime, again.precision) == ("openvino", "bf16")
    assert built == [] and predictors == {}  # nothing built: the caller builds the winner alone
    remeasured, _ = measure_runtime(options, build, "k", tmp_path, remeasure=True, meter=driven_meter(0.0), timer=timer)
    assert not remeasured.cached and built == [ORT, OV_BF16]


def test_a_tie_is_onnxruntime_and_the_verdict_says_why(tmp_path):
    options = [Candidate("onnxruntime", "fp32"), Candidate("openvino", "fp32")]
    timer = lambda p, i, r: ([{ORT: 1.0, OV: 0.95}] * 3, {OV: 1.0})  # noqa: E731
    verdict, _ = measure_runtime(options, lambda c: Fake(), "k", None, meter=driven_meter(0.0), timer=timer)
    assert verdict.runtime == "onnxruntime" and "no runtime 10% ahead of onnxruntime in every round" in verdict.describe()
    assert "OpenVINO is not installed" in NOT_INSTALLED


def test_the_pipeline_keeps_the_order_and_prepares_at_most_depth_batches_ahead():
    prepared, finished = [], []
    too_far = threading.Event()
    depth = 2

    def prepare(batch):
        prepared.append(batch)
        if len(prepared) - len(finished) > 2 * depth + 1:
            too_far.set()
        return batch * 10

    def predict(batch):
        too_far.wait(timeout=0.2 if batch == 0 else 0)  # an unbounded reader would run ahead meanwhile
        return batch + 1

    pipelined(range(12), prepare, predict, lambda p, o: finished.append((p, o)), depth=depth)
    assert not too_far.is_set()
    assert finished == [(b * 10, b * 10 + 1) for b in range(12)] and prepared == list(range(12))


def test_an_error_in_any_stage_reaches_the_caller():
    def fail(*_):
        raise OSError("disk full")

    for stage in range(3):
        steps = [lambda b: b, lambda p: p, lambda p, o: None]
        steps[stage] = fail
        with pytest.raises(OSError, match="disk full"):
            pipelined(range(5), *steps)


def test_serve_runtime_is_checked_with_the_other_serve_settings():
    from petseg_cli.base.errors import UsageError
    from petseg_cli.config.settings import ServeSettings, validate_serve

    assert validate_serve(ServeSettings(runtime="auto")).runtime == "auto"
    with pytest.raises(UsageError, match="--runtime must be one of auto, onnxruntime, openvino, got 'tvm'"):
        validate_serve(ServeSettings(runtime="tvm"))


def test_serving_openvino_leaves_the_tcmalloc_petseg_preloaded_and_only_that():
    from petseg_cli.machine.allocator import ENV_REEXECUTED, without_preloaded_tcmalloc

    ours = {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4 /opt/libother.so", ENV_REEXECUTED: "1", "HOME": "/root"}
    assert without_preloaded_tcmalloc(ours) == {**ours, "LD_PRELOAD": "/opt/libother.so"}  # never preloaded again
    assert without_preloaded_tcmalloc({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}) is None  # the user's own
    assert without_preloaded_tcmalloc({ENV_REEXECUTED: "1"}) is None
