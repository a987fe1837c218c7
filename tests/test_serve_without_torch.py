"""Serving without torch: a fresh venv with petseg installed --no-deps plus exactly the serve-onnx extra's
packages (from the configured package index) serves an exported model, and torch is not importable there.
Also: serve's one-line "pip install …" when a serving package is missing."""

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from synthetic import photo

EXTRA = "serve-onnx"
READY_TIMEOUT_S = 300


def extra_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][EXTRA]


def test_the_docs_install_exactly_the_extras_packages():
    """docs/serving.md's install line lists the extra's packages, no more, no fewer."""
    page = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    line = next(line for line in page.splitlines() if line.startswith("pip install onnxruntime"))
    documented = set(line.split("#")[0].split()[2:])
    assert documented == {re.split(r"[<>=]", r)[0] for r in extra_requirements()}


def test_serve_names_the_missing_package_in_one_line(tmp_path):
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"  # as if it were not installed
        "from petseg_cli.cli.app import main\nsys.argv = ['petseg', 'serve', 'model.onnx']\nmain()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: petseg serve needs uvicorn: pip install uvicorn  (petseg's serve-onnx extra lists all that "
        "serving an .onnx file needs)"
    ]


@pytest.fixture(scope="module")
def model_file(request):
    """The tiny run's default export (made once for the whole run, conftest.py)."""
    pytest.importorskip("onnxruntime")
    return request.getfixturevalue("tiny_run_exports")[0].path


def pip(venv, *args):
    """This environment's pip installs into ``venv`` (--python): the venv needs no pip of its own."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
         "--disable-pip-version-check", "--no-compile", *args],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def venv_without_torch(tmp_path_factory):
    venv = tmp_path_factory.mktemp("serve-onnx") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    pip(venv, "--no-deps", str(REPO))
    pip(venv, *extra_requirements())
    return venv


def serve(venv, model, cwd):
    """``petseg serve MODEL --port 0`` from the venv's own script; its URL once ready, and its stderr lines."""
    process = subprocess.Popen(
        [str(venv / "bin" / "petseg"), "serve", str(model), "--port", "0"], cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"], "HOME": str(cwd)},
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        found = next((re.search(r"at (http://127\.0\.0\.1:\d+/)", line) for line in list(lines) if " at http" in line), None)
        if found:
            url = found.group(1)
            try:
                if httpx.get(url + "readyz", timeout=10).status_code == 200:
                    return process, url, lines
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the server did not become ready:\n" + "".join(lines))


@pytest.mark.slow
def test_a_venv_with_only_the_extra_serves_an_exported_model(venv_without_torch, model_file, tmp_path):
    python = str(venv_without_torch / "bin" / "python")
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr

    buffer = io.BytesIO()
    Image.fromarray(photo(96, 72)).save(buffer, format="JPEG")
    process, url, lines = serve(venv_without_torch, model_file, tmp_path)
    try:
        answer = httpx.post(url + "v1/masks", content=buffer.getvalue(), timeout=120)
        coco = httpx.post(url + "v1/masks?format=coco", content=buffer.getvalue(), timeout=120)
        cut_out = httpx.post(url + "v1/masks?format=cutout", content=buffer.getvalue(), timeout=120)
        backend = httpx.get(url + "v1/model", timeout=30).json()["backend"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert answer.status_code == 200, answer.text
    mask = Image.open(io.BytesIO(answer.content))
    assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (96, 72))
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert coco.status_code == 200 and coco.json()["segmentation"]["size"] == [72, 96], coco.text
    assert cut_out.status_code == 200 and Image.open(io.BytesIO(cut_out.content)).mode == "RGBA", cut_out.text
    assert "onnx" in backend.lower() and code == 0, "".join(lines)

    (tmp_path / "cat.jpg").write_bytes(buffer.getvalue())
    infer = subprocess.run(
        [str(venv_without_torch / "bin" / "petseg"), "infer", "cat.jpg", "--model-file", str(model_file), "-o", "cat.png"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert infer.returncode == 0, infer.stderr
    assert Image.open(tmp_path / "cat.png").size == (96, 72)
