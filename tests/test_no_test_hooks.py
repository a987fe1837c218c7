"""No test code in production paths, and nothing global at import: no environment variable makes the
package sleep or kill (the faults the tests need come from tests/petseg_with_faults.py), and importing
any of its modules changes no process-wide setting and raises nothing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from conftest import REPO, cli_environment

PACKAGE = REPO / "petseg_cli"
# Calls that make a process wait or die.
SLEEP_OR_KILL = {"sleep", "kill", "killpg", "raise_signal", "_exit", "abort"}


def reads_environment(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")) or (isinstance(n, ast.Name) and n.id == "getenv")
        for n in ast.walk(node)
    )


def environment_derived(scope: ast.AST) -> set[str]:
    """The names in ``scope`` whose value comes, directly or through other such names, from the environment."""
    derived: set[str] = set()
    assignments = [n for n in ast.walk(scope) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and n.value is not None]
    while True:
        before = len(derived)
        for assignment in assignments:
            if reads_environment(assignment.value) or names(assignment.value) & derived:
                targets = assignment.targets if isinstance(assignment, ast.Assign) else [assignment.target]
                derived |= {name for target in targets for name in names(target)}
        if len(derived) == before:
            return derived


def names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def environment_driven_sleeps_and_kills(source: str, where: str) -> list[str]:
    """Each call in ``source`` that sleeps or kills with an argument from the environment, or under a
    condition that reads it."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
    derived = {scope: environment_derived(scope) for scope in scopes}
    found = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and called_name(n) in SLEEP_OR_KILL):
        conditions, node = [], call
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.If, ast.While, ast.IfExp)):
                conditions.append(node.test)
            if node in derived:
                break
        tainted = derived[node]
        driving = [*call.args, *(k.value for k in call.keywords), *conditions]
        if any(reads_environment(n) or names(n) & tainted for n in driving):
            found.append(f"{where}:{call.lineno} {ast.unparse(call)}")
    return found


def test_no_environment_variable_read_by_the_package_makes_it_sleep_or_kill():
    found = [
        hit for path in sorted(PACKAGE.rglob("*.py"))
        for hit in environment_driven_sleeps_and_kills(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert found == []


def test_the_check_finds_a_sleep_or_a_kill_that_the_environment_drives():
    """The two hooks the package had (files._slow_down_for_tests, loop.die_if_asked), and what is fine."""
    slow = "def f(path):\n    s = os.environ.get('SLOW')\n    if s:\n        time.sleep(float(s))\n"
    kill = ("def f(epoch):\n    asked = os.environ.get('KILL_AT')\n    e, _, r = asked.partition(':')\n"
            "    if int(e) == epoch:\n        os.kill(os.getpid(), 9)\n")
    retry = "def f():\n    host = os.environ['HOST']\n    while True:\n        if connect(host):\n            return\n        time.sleep(0.2)\n"
    assert len(environment_driven_sleeps_and_kills(slow, "slow")) == 1
    assert len(environment_driven_sleeps_and_kills(kill, "kill")) == 1
    assert environment_driven_sleeps_and_kills(retry, "retry") == []


# In a fresh interpreter: import every module of the package, and compare what is process-wide before and after.
IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, signal, sys
import PIL.Image
import petseg_cli

def state():
    return {"pixels": PIL.Image.MAX_IMAGE_PIXELS, "signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]}

before, failed = state(), {}
for module in pkgutil.walk_packages(petseg_cli.__path__, "petseg_cli."):
    if module.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
print(json.dumps({"before": before, "after": state(), "failed": failed}))
"""

@pytest.mark.slow  # a fresh interpreter importing torch, onnx, mlflow …: about 3 s
def test_importing_any_module_changes_nothing_process_wide_and_raises_nothing():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], env=cli_environment(None), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["after"] == seen["before"]
    assert seen["failed"] == {}


def test_the_serving_module_imports_without_the_serving_packages():
    """Only ``serve`` needs uvicorn (and says so in one line: test_serve_without_torch.py)."""
    code = "import sys\nsys.modules['uvicorn'] = None\nimport petseg_cli.serve.server"
    result = subprocess.run([sys.executable, "-c", code], env=cli_environment(None), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_files_and_directories_get_the_umask_s_mode_and_the_umask_is_never_set(tmp_path, monkeypatch):
    """Setting the umask, even for a moment, lets another thread create a world-writable file."""
    import os
    import stat

    from petseg_cli.base import files

    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:#o}) sets the process's umask"))
        files.write_text_atomic(tmp_path / "a.txt", "x")
        staging = files.new_directory_beside(tmp_path / "dataset")  # download's staging directory
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE(staging.stat().st_mode) == 0o750 and staging.name.startswith(".dataset.")
