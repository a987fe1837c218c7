"""Elastic torchrun: a restart after a worker died continues the same run (--resume-if-exists), and two
nodes (two torchrun launches with c10d rendezvous on 127.0.0.1) train like one process until one of them
dies, then the other goes on alone.

Each is compared with one run of one process (conftest's ddp_reference): unet (no BatchNorm, whose
statistics would be per process), fp32, 32 px, a global batch of 4, 2 epochs."""

import importlib.util
import json
import socket
import subprocess
import sys
import tomllib

import pytest

from conftest import DDP_ARGS, cli_environment
from petseg_with_faults import command
from run_files import assert_plain_checkpoints

pytestmark = pytest.mark.slow  # several processes / injected faults

# 2 epochs: a worker killed as epoch 2 begins leaves one finished epoch to resume from and one to train.
ARGS = [*DDP_ARGS, "-e", "2"]
TOLERANCE = 1e-4  # the processes sum in another order
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


# What one torchrun launch may take here (they take 10 to 40 s on a loaded 2-core machine): a launch that
# hangs fails its test with torchrun's output instead of blocking the run.
LAUNCH_TIMEOUT = 300


def launch(launcher_args, train_args, cwd, env=None, faults=None):
    """torchrun running ``petseg train``; with ``faults``, through tests/petseg_with_faults.py."""
    environment = cli_environment({"OMP_NUM_THREADS": "1", **(env or {})})
    petseg = command(faults, ["train", *ARGS, *train_args]) if faults else ["-m", "petseg_cli", "train", *ARGS, *train_args]
    command_line = [*TORCHRUN, *launcher_args, *petseg]
    return subprocess.Popen(command_line, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=LAUNCH_TIMEOUT):
    """torchrun's exit status and output; a launch still running after ``timeout`` seconds is stopped and
    fails the test, with what torchrun and its workers wrote."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop(process)
        pytest.fail(f"torchrun did not finish within {timeout} s: {' '.join(process.args)}\n"
                    f"--- its stderr:\n{stderr}\n--- its stdout:\n{stdout}")
    return process.returncode, stdout, stderr


def stop(process):
    """Stop a launch if it still runs (SIGTERM: torchrun stops its workers, which run in sessions of their
    own; SIGKILL if it has not ended a minute later); what it wrote."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.communicate() if not process.stdout.closed else ("", "")  # closed: already read by finish


def history(run_dir):
    return json.loads((run_dir / "history.json").read_text())["epochs"]


def assert_same_history(expected, got):
    assert [e["epoch"] for e in got] == [e["epoch"] for e in expected]
    for want, have in zip(expected, got):
        for key in ("train_loss", "val_loss", "val_dice", "lr"):
            assert have[key] == pytest.approx(want[key], rel=TOLERANCE, abs=TOLERANCE), (key, want, have)


@pytest.fixture
def data(ddp_data):
    return ddp_data


@pytest.fixture
def uninterrupted(ddp_reference):
    """The history every run here must equal: one process, 2 epochs, nothing killed."""
    return ddp_reference


def test_two_compiled_processes_train_like_one_and_a_restart_after_a_worker_is_killed_continues_the_run(data, uninterrupted, tmp_path):
    """Two processes with a global batch of 4 (2 each) train like one process with a batch of 4, through a
    restart: rank 1 dies as epoch 2 begins, torchrun restarts both, and they resume the run after epoch 1.
    Only the first process prints and writes (the run's files, its TensorBoard events: one file per
    launch, the restart keeping the logger). Compile is forced on: torch.compile over DDP (dynamo captures
    the DDP-wrapped model, split where DDP's gradient buckets end), with torch's aot_eager backend
    (TORCH_COMPILE_OVERRIDE_BACKENDS: everything but inductor's kernels, which test_compile.py builds);
    the restarted workers compile again, and the checkpoints stay plain. (An eager restart is the
    scale-down test's below; an eager pair of processes, the two nodes'.) The same command once more, as a
    re-queued job, finds nothing to train."""
    launcher = ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    tensorboard = ["--logger", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    train = ["--data-dir", str(data), "--name", "e", "--resume-if-exists", "--compile", *tensorboard]
    # Rank 1 SIGKILLs itself as epoch 2 begins; LOGLEVEL=INFO: torchrun logs its restart too.
    env = {"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager", "LOGLEVEL": "INFO"}
    code, stdout, stderr = finish(launch(launcher, train, tmp_path, env, faults=["--kill-at", "2:1"]))
    print(stderr)  # torchrun's lines about the failure and the restart (pytest shows them with -s or on failure)
    assert code == 0, stderr
    assert "resuming" in stdout + stderr and "after epoch 1" in stdout + stderr  # the restart continued epoch 1
    assert "exitcode: -9" in stderr  # torchrun saw the worker SIGKILLed
    assert stdout.count("epoch   1/2") == 1 and stdout.count("epoch   2/2") == 1  # one process prints, once
    assert stderr.count("compiled the training step at 32 px in") == 2  # once per launch of the workers
    assert "compiled the validation step in" in stderr
    run = tmp_path / "runs" / "e"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["e"]
    got = history(run)
    assert [e["epoch"] for e in got] == [1, 2]
    assert_same_history(uninterrupted, got)
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["run"]["processes"] == 2 and config["train"]["batch_size"] == 4  # the global batch
    assert config["run"]["compile"] is True
    assert json.loads((run / "history.json").read_text())["summary"]["stop_reason"] == "completed"
    assert_plain_checkpoints(run, "unet")
    if tensorboard:
        assert len(list((run / "tensorboard").iterdir())) == 2

    before = (run / "history.json").read_bytes()
    code, stdout, stderr = finish(launch(launcher, train, tmp_path, env))  # the same command line once more
    assert code == 0, stderr
    assert "nothing to train" in stdout + stderr and "epoch   1/2" not in stdout
    assert (run / "history.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["e"]


# Once a rendezvous of --nnodes 1:2 has one node, it waits this long for the second: the restart that finds
# the second node gone waits all of it (torchrun's default: 30 s). Both nodes start together.
LAST_CALL_SECONDS = 10
# A node whose agent has not sent its heartbeat for KEEP_ALIVE_SECONDS x KEEP_ALIVE_ATTEMPTS is dead to the
# rendezvous: the restart waits that long for the killed node to be dropped (torchrun's default: 5 x 3 s).
KEEP_ALIVE_SECONDS, KEEP_ALIVE_ATTEMPTS = 1, 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_nnodes_1_to_2_the_node_that_remains_continues_the_run_alone(data, uninterrupted, tmp_path):
    """Two nodes (two torchrun launches, c10d rendezvous on 127.0.0.1, one process each) train epoch 1
    together like one process; then the second node dies (its agent and its worker SIGKILLed as epoch 2
    begins) and the first, which hosts the rendezvous, restarts alone with the same global batch (4 images
    in one process) and finishes. Only the first node writes the run."""
    endpoint = f"127.0.0.1:{free_port()}"

    def node(is_host, faults=None):
        rendezvous = ["--nnodes", "1:2", "--nproc_per_node", "1", "--max-restarts", "1", "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", endpoint, "--rdzv-id", "petseg-scale-down",
                      "--rdzv-conf", f"is_host={is_host},last_call_timeout={LAST_CALL_SECONDS},"
                      f"keep_alive_interval={KEEP_ALIVE_SECONDS},keep_alive_max_attempt={KEEP_ALIVE_ATTEMPTS}"]
        return launch(rendezvous, ["--data-dir", str(data), "--name", "s", "--resume-if-exists"], tmp_path, faults=faults)

    first, second = node(1), node(0, ["--kill-at", "2", "--kill-agent"])
    try:
        second_code, _, _ = finish(second)
        code, stdout, stderr = finish(first)
    finally:
        for node_launch in (first, second):
            stop(node_launch)
    assert second_code == -9  # the second node is gone
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s"]
    assert "resuming runs/s after epoch 1" in stdout + stderr
    assert "training unet (31,031,810 parameters) on cpu into runs/s" in stdout + stderr  # one process now
    got = history(tmp_path / "runs" / "s")
    assert [e["epoch"] for e in got] == [1, 2]
    assert_same_history(uninterrupted, got)
