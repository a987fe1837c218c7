"""Hardening, infer: hostile and odd inputs fail alone, in one line; odd sizes work; memory stays bounded."""

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, invoke_cli


def good_image(folder):
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "good.jpg")
    return folder / "good.jpg"


def write_bad(folder, how):
    path = folder / {"zero-byte": "empty.jpg", "text-as-png": "notes.png", "truncated-jpeg": "cut.jpg"}[how]
    if how == "zero-byte":
        path.write_bytes(b"")
    elif how == "text-as-png":
        path.write_text("just some notes\n")
    elif how == "truncated-jpeg":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:1500])
    return path


@pytest.mark.parametrize("how", ["zero-byte", "text-as-png", "truncated-jpeg"])
def test_unreadable_file_fails_alone(how, tiny_run, tmp_path):
    good, bad = good_image(tmp_path), write_bad(tmp_path, how)
    result = invoke_cli("infer", str(good), str(bad), "-o", str(tmp_path / "out"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / f"{bad.stem}.png").exists()
    assert bad.name in result.stderr and "Traceback" not in result.stderr


def test_missing_file(tiny_run, tmp_path):
    result = invoke_cli("infer", str(tmp_path / "nope.jpg"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode != 0 and "nope.jpg" in result.stderr and "Traceback" not in result.stderr


def test_directory_without_images(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    result = invoke_cli("infer", str(tmp_path / "empty"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode != 0 and "no image" in result.stderr.lower() and "Traceback" not in result.stderr


def test_one_pixel_image(tiny_run, tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    result = invoke_cli("infer", str(tmp_path / "dot.png"), "-o", str(tmp_path / "dot-mask.png"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "dot-mask.png").size == (1, 1)


@pytest.mark.slow  # a 20-megapixel photo through infer: ~10 s
def test_huge_image_works_with_bounded_memory(tiny_run, tmp_path):
    gradient = np.linspace(0, 255, 10000, dtype=np.uint8)[None, :, None].repeat(8000, 0).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "huge.jpg", quality=70)
    del gradient
    code = (
        # VmHWM: this process's own peak. getrusage's ru_maxrss would also count the parent's resident set
        # when it forked (Linux keeps the high-water mark across fork and exec): the test worker's.
        "import sys; from petseg_cli.cli.app import main; sys.argv = ['petseg'] + sys.argv[1:];\n"
        "try: main()\nexcept SystemExit as e: code = e.code\nelse: code = 0\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        "print('PEAK_MB', int(hwm) // 1024); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "infer", str(tmp_path / "huge.jpg"), "-o", str(tmp_path / "huge.png"), "--run", str(tiny_run)],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "huge.png").size == (10000, 8000)
    peak_mb = int(result.stdout.split("PEAK_MB")[1].split()[0])
    print(f"peak RSS for a 10000x8000 image: {peak_mb} MB")
    assert peak_mb < 3000  # the image itself is 240 MB as RGB; a few copies of it at most


@pytest.mark.parametrize("how", ["parent-is-a-file", "read-only-filesystem"])
def test_unwritable_output_path(how, tiny_run, tmp_path):
    good = good_image(tmp_path)
    if how == "parent-is-a-file":
        (tmp_path / "plain").write_text("a file, not a folder")
        target = tmp_path / "plain" / "mask.png"
    else:
        target = "/proc/petseg-mask.png"  # a read-only filesystem, even for root
    result = invoke_cli("infer", str(good), "-o", str(target), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr and "mask.png" in result.stderr
    if how == "parent-is-a-file":
        assert f"{tmp_path / 'plain'} is a file, not a directory" in result.stderr
        assert (tmp_path / "plain").read_text() == "a file, not a folder"


def test_output_on_a_read_only_mount_fails_and_the_mask_already_there_is_kept(tiny_run, tmp_path):
    """out/ is bind-mounted read-only in a private mount namespace (root cannot write there either)."""
    good, out = good_image(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "mask.png").write_bytes(b"an earlier mask")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount --bind -o ro {out} {out}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a read-only mount here (needs unshare and mount rights)")
    petseg = [sys.executable, "-m", "petseg_cli", "infer", str(good), "-o", str(out / "mask.png"), "--run", str(tiny_run), "--overwrite"]
    script = f"mount --bind -o ro {out} {out} && exec {shlex.join(petseg)}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "mask.png" in errors[0] and "Read-only file system" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "mask.png").read_bytes() == b"an earlier mask" and sorted(p.name for p in out.iterdir()) == ["mask.png"]


def test_output_in_a_directory_that_does_not_exist_is_created(tiny_run, tmp_path):
    good = good_image(tmp_path)
    target = tmp_path / "new" / "deeper" / "mask.png"
    result = invoke_cli("infer", str(good), "-o", str(target), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.is_file()
