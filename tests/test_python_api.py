"""``Segmenter`` (petseg_cli/api.py, docs/python.md): docs/python.md's code blocks run as written; the mask of
a photo is pixel-equal to `petseg infer`'s for a path, a PIL image and an array, in RGB, RGBA, gray and 16-bit
gray; what cannot be an image is one clear ImageInputError."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, invoke_cli
from petseg_cli import ImageInputError, Segmenter
from petseg_cli.data.demo_set import demo_dir
from petseg_cli.base.errors import PetsegError

PHOTO = "Abyssinian_101.jpg"  # a real photo of the demo set


@pytest.fixture(scope="module")
def segmenter(spread_run):
    return Segmenter.load(spread_run)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """One real photo as files of each mode: RGB JPEG, RGBA, gray and 16-bit gray PNG."""
    where = tmp_path_factory.mktemp("photos")
    photo = Image.open(demo_dir() / "images" / PHOTO)
    shutil.copy(demo_dir() / "images" / PHOTO, where / "rgb.jpg")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(where / "rgba.png")
    photo.convert("L").save(where / "gray.png")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(where / "gray16.png")
    return where


@pytest.mark.slow  # ~15 s under a load of 9 on 2 cores: three loads of the model, a dozen predictions
def test_the_pages_code_blocks_run_as_written(spread_run, tmp_path, monkeypatch):
    page = (REPO / "docs" / "python.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert len(blocks) >= 3
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(spread_run)
    shutil.copy(demo_dir() / "images" / PHOTO, tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), {})
    assert Image.open("cat_cutout.png").mode == "RGBA"


@pytest.mark.slow  # ~25 s under a load of 9 on 2 cores: infer, then 20 predictions
def test_every_kind_of_input_gives_the_mask_and_cutout_that_infer_writes(segmenter, spread_run, photos, tmp_path):
    result = invoke_cli("infer", str(photos), "--run", str(spread_run), "-o", str(tmp_path), "--cutout", "--background", "white", "-b", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("rgb.jpg", "rgba.png", "gray.png", "gray16.png"):
        path = photos / name
        expected = np.asarray(Image.open(tmp_path / f"{path.stem}.png"))
        assert 0 < (expected == 255).mean() < 1, "a mask of one value would compare nothing"
        image = Image.open(path)
        for given in (path, str(path), image, np.asarray(image)):
            assert np.array_equal(segmenter.mask(given), expected), (name, type(given))
        cut = np.asarray(Image.open(tmp_path / f"{path.stem}_cutout.png"))
        # infer runs one photo a batch, as the Segmenter does (oneDNN's kernels differ by batch size, and
        # so may a soft edge's probability); its process may still use another number of threads, which may
        # round a probability one 8-bit level apart and so move a soft edge's pixel by one.
        difference = np.abs(segmenter.cutout(path, background="white").astype(int) - cut.astype(int))
        assert difference.max() <= 1, name
    assert image.mode == "I;16"


def test_a_batch_gives_each_photo_its_own_size(segmenter, photos):
    photo = Image.open(photos / "rgb.jpg")
    small = photo.resize((70, 50))
    probs = segmenter.probabilities([photo, small])
    assert [p.shape for p in probs] == [(photo.height, photo.width), (50, 70)]
    assert np.array_equal(probs[0], segmenter.probability(photo))
    assert np.array_equal(segmenter.masks([small])[0], segmenter.mask(small))


@pytest.mark.parametrize("given", [
    [1, 2, 3], 3.5, None, np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.uint8),
    np.zeros((8, 8, 3), np.uint16), np.zeros((0, 8), np.uint8), np.zeros((2, 8, 8, 3), np.uint8),
])
def test_what_cannot_be_an_image_is_one_clear_error(segmenter, given):
    with pytest.raises(ImageInputError, match="cannot be an image: pass a path, a PIL image, or a numpy array") as caught:
        segmenter.mask(given)
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, PetsegError)


def test_a_pil_image_that_cannot_become_rgb_is_one_clear_error(segmenter):
    with pytest.raises(ImageInputError, match="a La PIL image cannot be read as RGB"):
        segmenter.mask(Image.new("La", (8, 8)))  # Pillow converts no premultiplied gray


def test_a_file_that_is_no_image_and_a_lone_image_for_a_list_are_refused(segmenter, photos, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo")
    for path, message in ((tmp_path / "notes.jpg", "notes.jpg"), (tmp_path / "missing.jpg", "no such file")):
        with pytest.raises(ImageInputError, match=message):
            segmenter.mask(path)
    with pytest.raises(ImageInputError, match=r"for one image, call Segmenter.probability\(\)"):
        segmenter.probabilities(str(photos / "rgb.jpg"))
    with pytest.raises(PetsegError, match="not a colour"):
        segmenter.cutout(photos / "rgb.jpg", background="no-such-colour")
