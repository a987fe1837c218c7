"""precision auto by measurement: the faster candidate of the timed steps wins (fp32 on a tie), the verdict
is cached per machine, model and size, and hardware without bf16 is never measured."""

import torch
from torch import nn

from petseg_cli.machine.probe import MARGIN, measure_precision


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def loss(logits, masks):
    return nn.functional.cross_entropy(logits.float(), masks)


def test_the_faster_measured_precision_wins_and_the_verdict_is_cached(tmp_path):
    cpu = torch.device("cpu")
    first = measure_precision(tiny_model, loss, 32, cpu, True, "machine | tiny | 32px", tmp_path)
    assert set(first.seconds) == {"fp32", "bf16"} and not first.cached
    fp32, bf16 = first.seconds["fp32"], first.seconds["bf16"]
    assert first.precision == ("bf16" if fp32 > bf16 * MARGIN else "fp32")
    again = measure_precision(tiny_model, loss, 32, cpu, True, "machine | tiny | 32px", tmp_path)
    assert again.cached and (again.precision, again.seconds) == (first.precision, first.seconds)
    other = measure_precision(tiny_model, loss, 64, cpu, True, "machine | tiny | 64px", tmp_path)
    assert not other.cached  # another size is measured anew


def test_a_cpu_without_native_bf16_keeps_fp32_unmeasured(tmp_path):
    verdict = measure_precision(tiny_model, loss, 32, torch.device("cpu"), False, "old cpu", tmp_path)
    assert verdict.precision == "fp32" and verdict.seconds == {} and not (tmp_path / "precision-probe.json").exists()
