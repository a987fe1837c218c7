"""The shape of the code, checked: import-linter's contracts (pyproject.toml), no import cycle, a package top
level that shows the layers (at most 15 entries), and no function over 100 lines."""

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "petseg_cli"
MAX_FUNCTION_LINES, MAX_TOP_LEVEL_ENTRIES = 100, 15


def test_lint_imports_keeps_every_contract():
    code = "import sys\nfrom importlinter.cli import lint_imports\nsys.exit(lint_imports(no_cache=True, no_logo=True))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_of_petseg_cli_takes_part_in_an_import_cycle():
    import grimp
    import networkx

    graph = grimp.build_graph("petseg_cli")
    edges = networkx.DiGraph(
        (module, imported) for module in graph.modules for imported in graph.find_modules_directly_imported_by(module)
    )
    cycles = list(networkx.simple_cycles(edges))
    assert cycles == [], cycles[:5]


def sizes(kind: type | tuple[type, ...]) -> list[tuple[str, int]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, kind):
                found.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_no_function_is_over_100_lines():
    """The one size cap: a module holds one concept and reads top to bottom; no function runs over 100 lines."""
    functions = [(name, n) for name, n in sizes((ast.FunctionDef, ast.AsyncFunctionDef)) if n > MAX_FUNCTION_LINES]
    assert functions == []


def test_the_package_top_level_lists_at_most_15_entries():
    """Packages by concept (cli, commands, predict, run, ...): the folder listing shows the layers."""
    entries = sorted(path.name for path in PACKAGE.iterdir() if path.name != "__pycache__")
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, entries


def test_every_function_and_class_of_the_package_is_used_somewhere():
    """No dead code: each module-level function or class is named somewhere besides its definition (in
    the package, the tests or the benchmarks)."""
    import re
    from collections import Counter

    sources = [path.read_text() for folder in ("petseg_cli", "tests", "benchmarks") for path in (REPO / folder).rglob("*.py")]
    words = Counter(word for source in sources for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))
    unused = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and words[node.name] < 2
    ]
    assert unused == []


def test_infer_and_serve_load_their_model_through_the_segmenter_of_the_python_api():
    """``petseg infer`` and ``petseg serve`` are thin callers of ``Segmenter`` (issue 36): they import it,
    and neither opens a predictor of its own."""
    import grimp

    graph = grimp.build_graph("petseg_cli")
    for caller in ("petseg_cli.commands.infer", "petseg_cli.serve.server", "petseg_cli.serve.app"):
        source = (REPO / (caller.replace(".", "/") + ".py")).read_text()
        assert "open_predictor" not in source, caller
    for caller in ("petseg_cli.commands.infer", "petseg_cli.serve.server"):
        assert "petseg_cli.predict.segmenter" in graph.find_modules_directly_imported_by(caller), caller


def test_the_training_loop_imports_at_most_four_of_petseg_s_modules():
    """train/loop.py calls what a training does besides its steps as callbacks (train/callbacks.py), never
    by name: it imports at most 4 distinct modules of petseg's, lazy imports and type-only ones counted."""
    package = ["petseg_cli", "train"]  # loop.py's
    modules = set()
    for node in ast.walk(ast.parse((PACKAGE / "train" / "loop.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y, from ..x import y, from . import x
            base = ".".join(package[: len(package) - node.level + 1])
            modules.update([f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "petseg_cli":
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.split(".")[0] == "petseg_cli")
    assert len(modules) <= 4, sorted(modules)
