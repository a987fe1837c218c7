import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli
from petseg_cli.commands.infer import InferOptions, infer
from run_files import petseg_in_a_fresh_process
from synthetic import photo

ORIENTATION = 0x0112  # the EXIF tag
ROTATED_90_CW = 6  # a viewer turns the stored pixels 90 degrees clockwise


def mask_of(path):
    with Image.open(path) as mask:
        return mask.mode, mask.size, np.asarray(mask)


def test_mask_has_the_size_of_the_input(tiny_run, tmp_path, config_reads):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(photo(333, 517)).save(inputs / "tall.jpg")
    Image.fromarray(photo(1024, 768)).save(inputs / "wide.png")
    config_reads.clear()
    result = invoke_cli("infer", str(inputs), "-o", str(tmp_path / "out"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert config_reads == [tiny_run / "config.toml"]  # the run's config parsed once
    for name, size in (("tall", (333, 517)), ("wide", (1024, 768))):
        mode, mask_size, values = mask_of(tmp_path / "out" / f"{name}.png")
        assert (mode, mask_size) == ("L", size)
        assert set(np.unique(values)) <= {0, 255}
        assert str(tmp_path / "out" / f"{name}.png") in result.stdout


def write_formats(folder):
    """One image per awkward format; the value is the (width, height) a viewer shows."""
    rgb = photo(48, 40)
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(folder / "deep.png")  # 16-bit gray
    Image.fromarray(rgb).save(folder / "anim.gif")
    Image.fromarray(rgb).save(folder / "plain.bmp")
    Image.fromarray(rgb).save(folder / "photo.webp")
    Image.fromarray(rgb).save(folder / "scan.tiff")
    Image.fromarray(rgb).save(folder / "really_png.jpg", format="PNG")  # read by content, not by name
    return {p.stem: (48, 40) for p in folder.iterdir()}


def test_awkward_formats_all_work(tiny_run, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    expected = write_formats(folder)
    with Image.open(folder / "deep.png") as deep, Image.open(folder / "cmyk.jpg") as cmyk:
        assert deep.mode.startswith("I") and cmyk.mode == "CMYK"  # the files are what they claim
    result = infer([str(folder)], InferOptions(output=tmp_path / "out", run=tiny_run, batch_size=4))
    assert result.failed == [] and len(result.written) == len(expected)
    for stem, size in expected.items():
        assert mask_of(tmp_path / "out" / f"{stem}.png")[:2] == ("L", size)


def test_exif_rotated_jpeg_gives_a_mask_as_the_viewer_shows_it(tiny_run, tmp_path):
    upright = photo(40, 64)  # what a viewer shows: 40 wide, 64 tall, the block at the top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the camera's pixels: 64 x 40
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90_CW
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)

    result = infer([str(tmp_path / "turned.jpg")], InferOptions(output=tmp_path / "out", run=tiny_run, overlay=True))
    assert result.failed == []
    assert mask_of(tmp_path / "out" / "turned.png")[1] == (40, 64)
    # The overlay is the photo as shown, so it matches the upright picture, not its upside-down twin.
    with Image.open(tmp_path / "out" / "turned_overlay.jpg") as overlay:
        shown = np.asarray(overlay.convert("L"), dtype=float).ravel()
    upright_gray = np.asarray(Image.fromarray(upright).convert("L"), dtype=float)
    right = np.corrcoef(shown, upright_gray.ravel())[0, 1]
    upside_down = np.corrcoef(shown, upright_gray[::-1, ::-1].ravel())[0, 1]
    assert right > 0.8 and right > upside_down + 0.5


def test_a_text_file_named_jpg_fails_alone(tiny_run, tmp_path):
    Image.fromarray(photo(50, 30)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_text("this is not a picture\n")
    result = invoke_cli("infer", "bad.jpg", "good.jpg", "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "bad.jpg" in errors[0] and "not an image" in errors[0]
    assert "Traceback" not in result.stderr
    assert mask_of(tmp_path / "masks" / "good.png")[1] == (50, 30)  # ./masks by default
    assert not (tmp_path / "masks" / "bad.png").exists()


def test_one_input_to_a_named_file_overwrite_probs_and_overlay(tiny_run, tmp_path):
    Image.fromarray(photo(70, 50)).save(tmp_path / "cat.jpg")
    args = ["infer", "cat.jpg", "-o", "result/mask.png", "--run", str(tiny_run)]
    first = invoke_cli(*args, "--overlay", "--cutout", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    written = ["result/mask.png", "result/mask_overlay.jpg", "result/mask_cutout.png"]
    assert first.stdout.split() == written and "masks written: 1" in first.stderr  # every file, one image
    assert mask_of(tmp_path / "result" / "mask.png")[1] == (70, 50)
    with Image.open(tmp_path / "result" / "mask_overlay.jpg") as overlay:
        assert overlay.format == "JPEG" and overlay.size == (70, 50)

    again = invoke_cli(*args, cwd=tmp_path)
    assert again.returncode == 1 and "--overwrite" in again.stderr

    probs = invoke_cli(*args, "--probs", "--overwrite", cwd=tmp_path)
    assert probs.returncode == 0, probs.stderr
    mode, size, values = mask_of(tmp_path / "result" / "mask.png")
    assert (mode, size) == ("L", (70, 50)) and not set(np.unique(values)) <= {0, 255}

    two = invoke_cli("infer", "cat.jpg", "cat.jpg", str(tmp_path), "-o", "x.png", "--run", str(tiny_run), cwd=tmp_path)
    assert two.returncode == 2 and "pass a directory" in two.stderr


def test_one_input_to_a_file_named_jpg_is_refused_not_made_a_directory(tmp_path):
    from petseg_cli.base.errors import UsageError
    from petseg_cli.commands.infer import InferResult, plan_jobs

    with pytest.raises(UsageError, match="a mask is written as a PNG"):
        plan_jobs([tmp_path / "cat.jpg"], InferOptions(output=tmp_path / "m.jpg"), InferResult())
    assert not (tmp_path / "m.jpg").exists()
    assert plan_jobs([tmp_path / "cat.jpg"], InferOptions(output=tmp_path / "m.png"), InferResult())[0].mask == tmp_path / "m.png"


def test_directories_globs_and_recursive(tiny_run, tmp_path):
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for name in ("pics/a.jpg", "pics/b.png", "pics/sub/c.jpg"):
        Image.fromarray(photo(32, 32)).save(tmp_path / name)
    (tmp_path / "pics" / "notes.txt").write_text("not an image, and not asked for\n")

    flat = infer([str(tmp_path / "pics")], InferOptions(output=tmp_path / "flat", run=tiny_run))
    deep = infer([str(tmp_path / "pics")], InferOptions(output=tmp_path / "deep", run=tiny_run, recursive=True))
    globbed = infer([str(tmp_path / "pics" / "*.jpg")], InferOptions(output=tmp_path / "glob", run=tiny_run))
    assert sorted(p.name for p in flat.written) == ["a.png", "b.png"] and not flat.failed
    assert sorted(p.name for p in deep.written) == ["a.png", "b.png", "c.png"] and not deep.failed
    assert [p.name for p in globbed.written] == ["a.png"] and not globbed.failed


def test_without_run_the_best_run_under_runs_is_used_and_named(tiny_run, tmp_path):
    Image.fromarray(photo(32, 32)).save(tmp_path / "dog.jpg")
    none = invoke_cli("infer", "dog.jpg", cwd=tmp_path)
    assert none.returncode == 1 and "petseg train" in none.stderr and "--run" in none.stderr

    for name, dice in (("worse", 0.2), ("better", 0.9)):
        copy = tmp_path / "runs" / name
        copy.mkdir(parents=True)
        for part in ("config.toml", "best.pth"):
            shutil.copy(tiny_run / part, copy / part)
        history = json.loads((tiny_run / "history.json").read_text())
        history["summary"]["best_val_dice"] = dice
        (copy / "history.json").write_text(json.dumps(history))
    result = invoke_cli("infer", "dog.jpg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "runs/better" in result.stderr and (tmp_path / "masks" / "dog.png").is_file()


def test_infer_imports_neither_albumentations_nor_matplotlib(tiny_run, tmp_path):
    Image.fromarray(photo(32, 32)).save(tmp_path / "one.jpg")
    args = ["infer", "one.jpg", "-o", "m.png", "--overlay", "--run", str(tiny_run)]
    code, loaded, stderr = petseg_in_a_fresh_process(args, tmp_path, ("albumentations", "matplotlib"))
    assert code == 0 and loaded == [], stderr
    assert (tmp_path / "m.png").is_file() and (tmp_path / "m_overlay.jpg").is_file()
