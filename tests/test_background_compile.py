"""Compiling beside the steps (train/background_compile.py, a budgeted run's --compile): a step runs eagerly
until its graph is compiled, then compiled with the model's own weights; the steps wait for a graph only
within their allowance; a failed or unending compilation leaves them eager and says so; a run that ends
while a graph compiles exits at once. In this process the graphs are small modules' on torch's aot_eager
backend (dynamo's and AOTAutograd's graphs without inductor's kernels), or on backends a test registers."""

import copy
import threading
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from conftest import run_cli
from petseg_cli.train.background_compile import TRAINING, VALIDATION, BackgroundCompile


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


@pytest.fixture
def backend():
    """The backend every compilation in this test uses: aot_eager, or another by name (``backend(NAME)``)."""
    import torch._dynamo

    patches = []

    def use(name: str) -> None:
        patches.append(torch._dynamo.config.patch(debug_backend_override=f">=0:{name}"))
        patches[-1].__enter__()

    use("aot_eager")
    yield use
    for patch in reversed(patches):
        patch.__exit__(None, None, None)
    torch._dynamo.reset()


def started(model, lines, wait_seconds=0.0, validated=None):
    return BackgroundCompile({TRAINING: model, VALIDATION: validated or model}, 2, wait_seconds, nullcontext, lines.append)


def batch(size=16, images=2):
    return torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(size))


def test_a_step_runs_eagerly_until_its_graph_is_compiled_then_compiled_on_the_models_own_weights(backend):
    model, lines, x = Small(), [], batch()
    compiler = started(model, lines)
    try:
        assert compiler.network(TRAINING, x) is model  # no allowance: the step does not wait
        assert lines == ["compiling the training step at 16 px (batch 2) beside the steps, which run eagerly until it is compiled …"]
        assert compiler.wait(120)
        with torch.no_grad():
            model.conv.weight.mul_(2.0)  # after compiling: the copy the graph was made on keeps the old weights
        eager = copy.deepcopy(model)
        net = compiler.network(TRAINING, x)
        assert net is compiler.compiled[TRAINING]
        assert lines[-1].startswith("compiled the training step at 16 px (batch 2) in ") and lines[-1].endswith(": its steps run compiled from now")
        out, expected = net(x), eager(x)
        torch.testing.assert_close(out, expected)
        out.square().sum().backward()
        expected.square().sum().backward()
        # the model's own parameters learn (as eagerly, up to the rounding of the decomposed BatchNorm backward)
        torch.testing.assert_close(model.conv.weight.grad, eager.conv.weight.grad, rtol=1e-3, atol=1e-4)
        assert compiler.network(TRAINING, x) is net and len(lines) == 2  # said once
    finally:
        compiler.close(wait=True)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def compiled_in_bf16_then_run_by_the_steps(tmp_path):
    """The thread compiles a training step under bf16 autocast (as a bf16 run's steps run); then a step in
    this thread runs that graph: the same figures as eagerly, and dynamo compiles no frame for it."""
    from torch._dynamo.utils import counters

    model, lines, x = Small(), [], batch()
    compiler = BackgroundCompile({TRAINING: model, VALIDATION: model}, 2, 300.0, bf16_autocast, lines.append)
    try:
        with bf16_autocast():
            net = compiler.network(TRAINING, x)  # waits for the graph: it compiles within the allowance
            assert net is compiler.compiled[TRAINING], lines
            frames = dict(counters["frames"])
            out = net(x)
            assert dict(counters["frames"]) == frames  # the thread's graph, not one compiled here
            expected = copy.deepcopy(model)(x)
        assert out.dtype == expected.dtype == torch.bfloat16
        torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)  # bf16 keeps 8 bits of mantissa
    finally:
        compiler.close(wait=True)


def test_under_bf16_autocast_the_steps_run_the_graph_the_thread_compiled(backend, tmp_path):
    compiled_in_bf16_then_run_by_the_steps(tmp_path)


@pytest.mark.slow  # inductor generates and builds its kernels: seconds, cold
def test_inductor_for_real_compiles_beside_the_steps_in_bf16(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # cold, and not the user's
    backend("inductor")
    compiled_in_bf16_then_run_by_the_steps(tmp_path)
    assert any((tmp_path / "inductor").iterdir())


def test_the_steps_wait_for_a_graph_within_their_allowance_and_count_the_wait(backend):
    model, lines = Small(), []
    compiler = started(model, lines, wait_seconds=300.0)
    try:
        assert compiler.network(TRAINING, batch()) is compiler.compiled[TRAINING]  # waited, then compiled
        assert lines[0] == ("compiling the training step at 16 px (batch 2) (first call; cached for later runs; the steps "
                            "wait at most 300 s for it, then run eagerly until it is compiled) …")
        assert 0 < compiler.waited < 300 and compiler.allowance == pytest.approx(300 - compiler.waited)
    finally:
        compiler.close(wait=True)


def test_a_smaller_last_batch_runs_eagerly_and_validation_compiles_the_validated_module_in_its_mode(backend):
    model, lines = Small(), []
    averaged = copy.deepcopy(model).requires_grad_(False).eval()  # as an EMA's module is
    with torch.no_grad():
        averaged.conv.weight.add_(0.5)
    compiler = started(model, lines, wait_seconds=300.0, validated=averaged)
    try:
        assert compiler.network(TRAINING, batch(images=1)) is model and compiler.graphs == {}  # never queued
        x = batch(32)
        with torch.inference_mode():
            net = compiler.network(VALIDATION, x)
            assert net is compiler.compiled[VALIDATION]
            torch.testing.assert_close(net(x), averaged(x))
        assert "compiling the validation step at 32 px (batch 2)" in lines[0]
    finally:
        compiler.close(wait=True)


def test_a_failed_compilation_says_why_once_and_its_steps_stay_eager(backend):
    import torch._dynamo

    @torch._dynamo.register_backend
    def fails_to_compile(graph_module, example_inputs):
        raise RuntimeError("no kernels today")

    backend("fails_to_compile")
    model, lines, x = Small(), [], batch()
    compiler = started(model, lines, wait_seconds=300.0)
    try:
        assert compiler.network(TRAINING, x) is model
        assert compiler.network(TRAINING, x) is model
        failed = [line for line in lines if "failed" in line]
        assert len(failed) == 1 and failed[0].startswith("compiling the training step at 16 px (batch 2) failed (")
        assert "no kernels today" in failed[0] and failed[0].endswith("): its steps stay eager")
    finally:
        compiler.close(wait=True)


def test_a_graph_still_compiling_when_the_wait_runs_out_leaves_the_steps_eager_and_is_named_at_the_end(backend):
    import torch._dynamo

    release = threading.Event()

    @torch._dynamo.register_backend
    def held_back(graph_module, example_inputs):
        release.wait()
        return graph_module.forward

    backend("held_back")
    model, lines, x = Small(), [], batch()
    compiler = started(model, lines, wait_seconds=1.0)
    try:
        assert compiler.network(TRAINING, x) is model  # waited its second, then eager
        assert lines[1].startswith("the training step at 16 px (batch 2) is still compiling after 1 s, the most the steps wait (20% of the budget)")
        assert compiler.allowance < 0.05 and compiler.network(TRAINING, x) is model
        compiler.on_train_end(None)
        assert lines[-1].startswith("the training step at 16 px (batch 2) was still compiling when the run ended: its steps ran eagerly")
    finally:
        release.set()
        compiler.close(wait=True)

    waiting = started(Small(), [], wait_seconds=600.0)  # a stop asked for (Ctrl-C) ends a step's wait
    release.clear()
    try:
        waiting.stop.set()
        assert waiting.network(TRAINING, batch(24)) is waiting.plain[TRAINING] and waiting.waited < 60  # a new shape: held back
    finally:
        release.set()
        waiting.close(wait=True)


@pytest.mark.slow  # a training in its own process
def test_a_budgeted_run_whose_compilation_never_ends_trains_eagerly_and_exits_without_waiting_for_it(dataset, tmp_path):
    """The compilation blocks for good (tests/petseg_with_faults.py): the run waits its allowance, trains
    eagerly, says what was still compiling, and exits 0 at once (petseg does not wait for that thread)."""
    result = run_cli("train", "--model", "unet", "--image-size", "32", "-b", "6", "-e", "1", "--compile",
                     "--precision", "fp32", "--time", "10s", "--data-dir", str(dataset), "--name", "never",
                     cwd=tmp_path, timeout=300, faults=["--compile-never-ends"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the steps wait at most 2 s for it" in result.stderr
    assert "the training step at 32 px (batch 6) was still compiling when the run ended: its steps ran eagerly" in result.stderr
    assert "terminate called" not in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "runs" / "never" / "best.pth").is_file()
