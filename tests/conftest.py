from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from synthetic import make_dataset  # tests/ is on sys.path under pytest

REPO = Path(__file__).resolve().parents[1]


def share_the_cores_among_workers() -> None:
    """Under pytest-xdist (``-n``), each worker process gets its share of the cores for torch's and
    onnxruntime's threads (OMP_NUM_THREADS, read when torch starts; the commands a test starts inherit it):
    two workers each spinning two threads on two cores would slow every test down. A value the user set
    is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))


share_the_cores_among_workers()  # before any test module imports torch


# Where the suite's files go when the machine has a RAM-backed tmpfs with room for them: the suite writes
# many GB of checkpoints (a resnet34-unet last.pth with its optimiser is 276 MB), and creating files on a
# virtual machine's disk costs several times the CPU of creating them in memory (the kernel's time
# writing them was about a fifth of the suite's CPU). Nothing petseg does depends on where they are.
MEMORY_ROOT = Path("/dev/shm")
MEMORY_ROOT_FREE_BYTES = 8 * 2**30  # the suite keeps under a few GB at once (passing tests' files are deleted)


def a_memory_backed_temporary_root() -> str | None:
    """MEMORY_ROOT where it is a writable directory with MEMORY_ROOT_FREE_BYTES free, else None (the
    system's temporary directory)."""
    import shutil

    try:
        if MEMORY_ROOT.is_dir() and os.access(MEMORY_ROOT, os.W_OK) and shutil.disk_usage(MEMORY_ROOT).free >= MEMORY_ROOT_FREE_BYTES:
            return str(MEMORY_ROOT)
    except OSError:
        pass
    return None


def pytests_temporary_directories_in_memory() -> None:
    """pytest's tmp_path and tmp_path_factory directories under the memory-backed root (PYTEST_DEBUG_TEMPROOT,
    pytest's documented override of the system temporary directory; read by the workers' parent, which
    names their directories), unless the user set it or there is no such root."""
    root = a_memory_backed_temporary_root()
    if root and "PYTEST_DEBUG_TEMPROOT" not in os.environ:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = root


pytests_temporary_directories_in_memory()


def a_scratch_directory_of_the_suites_own() -> None:
    """petseg's cache (precision verdicts, inductor's kernels, decoded datasets) goes to a directory of
    this run's own (XDG_CACHE_HOME), made by the first process and inherited by the pytest-xdist workers
    and the commands the tests start: the suite neither reads nor fills the user's ~/.cache, so a verdict
    cached there cannot change a result, and every run measures as CI's fresh machine does. What the
    commands leave in the temporary directory (TMPDIR: torchrun's log directories, the browser's profile)
    goes there too, and all of it is deleted when the run ends. It is made under the memory-backed root
    where there is one. This process's own temporary files stay where they were (tempfile chose its
    directory before TMPDIR changed); pytest's tmp_path is under PYTEST_DEBUG_TEMPROOT (above)."""
    made = os.environ.get("PETSEG_TEST_CACHE")
    if made and os.environ.get("XDG_CACHE_HOME") == made:
        return  # a worker: its parent made it
    import atexit
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="petseg-test-", dir=a_memory_backed_temporary_root()))
    (directory / "cache").mkdir()
    (directory / "tmp").mkdir()
    os.environ["XDG_CACHE_HOME"] = os.environ["PETSEG_TEST_CACHE"] = str(directory / "cache")
    os.environ["TMPDIR"] = str(directory / "tmp")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


a_scratch_directory_of_the_suites_own()


def bytecode_compiled_once() -> None:
    """Where Python writes no bytecode (PYTHONDONTWRITEBYTECODE), every one of the hundreds of commands the
    suite starts would compile petseg's source (and the tests' helpers it imports) again: compile it once
    here, into the __pycache__ directories Python would otherwise have written (git ignores them). The
    workers' parent does it, before any worker starts; where Python writes bytecode nothing is needed."""
    if not sys.flags.dont_write_bytecode or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import compileall

    for directory in ("petseg_cli", "tests", "benchmarks"):
        compileall.compile_dir(REPO / directory, quiet=1)


bytecode_compiled_once()


def runs_train_in_fp32_unless_a_test_asks() -> None:
    """Every training the tests start is fp32 (PETSEG_PRECISION, the documented environment override of
    train.precision), unless the test passes ``--precision``: precision auto measures both precisions
    for ten seconds or more before a run, and on the suite's busy machine it caches nothing, so a tiny
    run would pay for it every time; two runs compared could also each decide differently. The tests of
    auto itself (test_precision_probe, test_decision_matrix, test_machine_command, test_speed_options)
    ask for it by flag or drop the variable."""
    os.environ["PETSEG_PRECISION"] = "fp32"


runs_train_in_fp32_unless_a_test_asks()


# The test files that take longest, longest first. pytest-xdist hands whole files to its workers in
# collection order (--dist loadfile --no-loadscope-reorder in pyproject.toml), so the long ones start at
# once and the short ones fill the gaps at the end: the workers finish together. Files not named here
# follow in their usual order. A stale list costs only balance, never a result.
LONGEST_FIRST = (
    "test_benchmarks.py", "test_elastic.py", "test_compile.py", "test_decision_matrix.py", "test_export.py",
    "test_quantize.py", "test_train.py", "test_distributed.py", "test_serve.py", "test_fits_80_columns.py",
    "test_closed_pipe.py", "test_fault_injection.py", "test_recipes.py", "test_interrupt_save.py", "test_speed_options.py",
    "test_readme.py", "test_serve_without_torch.py", "test_run_dir.py", "test_progressive.py", "test_trackers.py",
    "test_first_run.py", "test_download.py", "test_resume_if_exists.py", "test_terminal_output.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def built_once(name: str, build: Callable[[Path], object]) -> Path:
    """``<the suite's scratch directory>/shared/NAME``, built by ``build(directory)`` once for the whole run:
    whichever pytest-xdist worker asks first builds it while the others wait for it (a file lock), and
    every worker reads the same files. What is built there is never modified; a worker that changes a
    run works on its own copy."""
    import shutil

    from filelock import FileLock

    shared = Path(os.environ["PETSEG_TEST_CACHE"]).parent / "shared"
    shared.mkdir(exist_ok=True)
    directory, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a build that failed part-way
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def dataset() -> Path:
    """A generated 30-image dataset (20 trainval, 10 test) in the release's layout, made once for the
    whole run. Do not modify."""
    return built_once("pets", lambda directory: make_dataset(directory / "oxford-iiit-pet")) / "oxford-iiit-pet"


TINY_RUN_NAME = "tiny"


def train_the_tiny_run(dataset: Path, runs_dir: Path) -> Path:
    """resnet34-unet trained 1 epoch at 64 px on ``dataset`` with the seed recipe, into ``runs_dir``."""
    from petseg_cli.config.settings import load_settings
    from petseg_cli.train import train

    settings = load_settings(
        overrides={
            "data": {"data_dir": str(dataset), "image_size": 64},
            # The report's recipe: its val_loss is the cross-entropy that evaluate reports too.
            "train": {"recipe": "seed", "epochs": 1, "batch_size": 4, "runs_dir": str(runs_dir)},
        }
    )
    return train(settings, name=TINY_RUN_NAME).run_dir


@pytest.fixture(scope="session")
def trained_tiny_run(dataset) -> Path:
    """The run ``train_the_tiny_run`` trains, once for the whole run (shared by every worker: never modify
    it; ``tiny_run`` is this worker's copy)."""
    return built_once("tiny-run", lambda directory: train_the_tiny_run(dataset, directory)) / TINY_RUN_NAME


@pytest.fixture(scope="session")
def tiny_run(trained_tiny_run, tmp_path_factory) -> Path:
    """A real run (``train_the_tiny_run``), this worker's copy. Tests may add files to it (evaluations); a
    test that damages a run works on a copy."""
    import shutil

    run = tmp_path_factory.mktemp("runs") / trained_tiny_run.name
    shutil.copytree(trained_tiny_run, run)
    return run


@pytest.fixture(scope="session")
def tiny_run_exports(trained_tiny_run, tiny_run):
    """The tiny run's default export (RUN/model.onnx) and its --int8 export (RUN/model.int8.onnx), each an
    ExportResult: made once for the whole run from a copy of the trained run (torch's exporter takes tens
    of seconds), then copied into this worker's ``tiny_run``."""
    import dataclasses
    import pickle
    import shutil

    def export_both(directory: Path) -> None:
        from petseg_cli.export.command import ExportOptions, export

        run = directory / trained_tiny_run.name
        shutil.copytree(trained_tiny_run, run)
        results = (export(run, ExportOptions()), export(run, ExportOptions(int8=True)))
        (directory / "results.pickle").write_bytes(pickle.dumps(results))

    built = built_once("tiny-run-exports", export_both)
    results = pickle.loads((built / "results.pickle").read_bytes())
    for result in results:  # over whatever a test left at these names: each result describes its file
        shutil.copyfile(result.path, tiny_run / result.path.name)
    return tuple(dataclasses.replace(result, path=tiny_run / result.path.name) for result in results)


# What test_elastic.py trains (and test_distributed.py's data): unet (no BatchNorm, whose statistics would be per
# process), fp32 (bf16 rounds a batch of 2 per process differently from one of 4), 32 px, a global batch of 4.
DDP_ARGS = ["--model", "unet", "--image-size", "32", "-b", "4", "--precision", "fp32"]


@pytest.fixture(scope="session")
def ddp_data() -> Path:
    """14 trainval lines at 32 px: 12 train images (3 global batches of 4, 2 per process) and 2 val images.
    Made once for the whole run. Do not modify."""
    return built_once("ddp-pets", lambda directory: make_dataset(directory / "pets", n_trainval=14, n_test=1, size=(32, 32))) / "pets"


@pytest.fixture(scope="session")
def ddp_reference(ddp_data) -> list[dict]:
    """The epochs of history.json of one process training DDP_ARGS for 2 epochs on ``ddp_data``: what
    torchrun's runs (two processes, a restart, two nodes) must equal. Trained once for the whole run."""
    import json

    def train_it(directory: Path) -> None:
        result = run_cli("train", *DDP_ARGS, "-e", "2", "--data-dir", str(ddp_data), "--name", "single",
                         cwd=directory, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr

    return json.loads((built_once("ddp-reference", train_it) / "runs" / "single" / "history.json").read_text())["epochs"]


@pytest.fixture(scope="session")
def spread_run(tiny_run, tmp_path_factory) -> Path:
    """``tiny_run`` with its 1x1 head rescaled. One epoch leaves the pet logit almost the same everywhere
    (every 8-bit probability alike, every mask all pet), which would make comparing pixels vacuous;
    rescaled around its mean, the probabilities spread over 0-255 and masks have pet and background."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image

    from petseg_cli.data.transforms import normalize
    from petseg_cli.run import Run
    from synthetic import photo

    run = tmp_path_factory.mktemp("spread") / tiny_run.name
    shutil.copytree(tiny_run, run)
    model = Run.open(run).load_model("best")[0].eval()
    features = []
    model.head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    images = np.stack([np.asarray(Image.fromarray(photo(90, 70, seed)).resize((64, 64))) for seed in range(4)])
    with torch.inference_mode():
        model(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
    weight = model.head.weight.detach().clone()
    difference = torch.einsum("nchw,c->nhw", features[0], (weight[1] - weight[0]).flatten())
    scale = 3.0 / float(difference.std())
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    checkpoint["state_dict"]["head.weight"] = weight * scale
    checkpoint["state_dict"]["head.bias"] = torch.tensor([0.0, -scale * float(difference.mean())])
    torch.save(checkpoint, run / "best.pth")
    return run


# Set by petseg in this process when a test trains in-process (inductor's cache, under petseg's): a user's
# shell has none of them, so a command started by a test must not inherit them.
SET_BY_PETSEG_IN_PROCESS = ("TORCHINDUCTOR_CACHE_DIR",)


def cli_environment(env: dict[str, str] | None) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in SET_BY_PETSEG_IN_PROCESS}
    return {**inherited, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}


def as_from_a_shell() -> None:
    """In the child, before exec: SIGINT and SIGTERM at their defaults and no signal blocked, as a command
    typed in a shell starts. What an earlier in-process test left in this worker (a handler set aside, a
    blocked signal) is otherwise inherited, and Ctrl-C could not reach the command a test starts."""
    import signal

    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def petseg_command(args: tuple[str, ...], faults: list[str] | None) -> list[str]:
    """``python -m petseg_cli ARGS``; with ``faults``, through tests/petseg_with_faults.py, which injects them."""
    from petseg_with_faults import command

    return [sys.executable, *(command(faults, list(args)) if faults else ["-m", "petseg_cli", *args])]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, faults: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m petseg_cli ARGS`` as a user would, in ``cwd``, with this checkout importable
    (``faults``: tests/petseg_with_faults.py's options)."""
    full_env = cli_environment(env)
    return subprocess.run(
        petseg_command(args, faults), cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout, preexec_fn=as_from_a_shell,
    )


def invoke_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``petseg ARGS`` in this process (Typer's runner), in ``cwd``: what ``run_cli`` does without the
    seconds of a new interpreter importing torch. For behaviour that needs its own process (signals,
    start-up imports, the allocator), use ``run_cli``. The process's torch thread count is restored
    afterwards, so that one test's ``--threads`` does not change another's arithmetic."""
    from typer.testing import CliRunner

    from petseg_cli.cli.app import app, fill_optional_values
    from petseg_cli.base.console import err, out

    previous = Path.cwd()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None  # `infer --threads` sets it for the process
    os.chdir(cwd)
    for console in (out, err):  # built from this command's $COLUMNS and streams, as in a new process
        console.reset()
    try:
        result = CliRunner().invoke(app, fill_optional_values(list(args)), env={"COLUMNS": "200", **(env or {})})
    finally:
        os.chdir(previous)
        if threads is not None:
            torch.set_num_threads(threads)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, faults: list[str] | None = None) -> subprocess.Popen:
    full_env = cli_environment(env)
    return subprocess.Popen(
        petseg_command(args, faults), cwd=cwd, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell,
    )


@pytest.fixture
def config_reads(monkeypatch) -> list[Path]:
    """Every parse of a run's config.toml in this process from here on, by whichever reader (a command
    opens its run once: ``petseg_cli.run.Run``)."""
    import petseg_cli.run.directory as directory
    import petseg_cli.config.settings as settings

    reads: list[Path] = []
    real = settings.read_toml

    def counted(path: Path) -> dict:
        if Path(path).name == "config.toml":
            reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(settings, "read_toml", counted)
    monkeypatch.setattr(directory, "read_toml", counted)
    return reads
