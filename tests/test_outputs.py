"""What users ask for besides a mask: cut-outs with soft edges, and COCO results that any COCO tool reads."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli
from synthetic import make_pair

from petseg_cli.data.masks import pet_mask, threshold_level
from petseg_cli.predict.outputs import cutout, cutout_alpha


def soft_probability(trimap: np.ndarray) -> np.ndarray:
    """A confident model's 8-bit probability of a generated pet: 255 inside, 0 outside, a ramp on the ring."""
    probability = np.where(trimap == 1, 255, 0).astype(np.uint8)
    probability[trimap == 3] = 128
    return probability


def test_a_cutout_is_transparent_on_the_background_and_opaque_inside_the_pet():
    image, trimap = make_pair(np.random.default_rng(3), 60, 80)
    rgba = cutout(image, soft_probability(trimap))
    assert rgba.shape == (60, 80, 4)
    alpha = rgba[..., 3]
    assert (alpha[trimap == 2] == 0).all() and (alpha[trimap == 1] == 255).all()
    assert ((alpha[trimap == 3] > 0) & (alpha[trimap == 3] < 255)).all()  # the edge is soft, not jagged
    assert np.array_equal(rgba[..., :3], image)  # the photo's own pixels


def test_a_cutout_on_a_colour_is_that_colour_where_the_background_was():
    image, trimap = make_pair(np.random.default_rng(4), 50, 50)
    rgb = cutout(image, soft_probability(trimap), background=(255, 255, 255))
    assert rgb.shape == (50, 50, 3)
    assert (rgb[trimap == 2] == 255).all() and np.array_equal(rgb[trimap == 1], image[trimap == 1])


def test_the_alpha_is_one_half_at_the_masks_threshold_and_rises_with_the_probability():
    levels = np.arange(256, dtype=np.uint8)
    alpha = cutout_alpha(levels)
    assert alpha[threshold_level(0.5)] == 128 and alpha[64] == 0 and alpha[192] == 255
    assert (np.diff(alpha.astype(int)) >= 0).all()


def test_infer_writes_cutouts_and_a_coco_file_that_decodes_to_its_masks(spread_run, tmp_path):
    from pycocotools import mask as coco_mask

    from synthetic import photo

    for seed in range(3):
        Image.fromarray(photo(90 + 10 * seed, 70, seed)).save(tmp_path / f"p{seed}.jpg")
    result = invoke_cli(
        "infer", "p0.jpg", "p1.jpg", "p2.jpg", "--run", str(spread_run), "-o", "out", "--cutout", "--coco", "masks.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    entries = json.loads((tmp_path / "masks.json").read_text())
    assert [e["image_id"] for e in entries] == [1, 2, 3]
    for seed, entry in enumerate(entries):
        written = np.asarray(Image.open(tmp_path / "out" / f"p{seed}.png"))
        decoded = coco_mask.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
        assert entry["file_name"] == f"p{seed}.jpg" and np.array_equal(decoded * 255, written)
        assert 0 <= entry["score"] <= 1
        rgba = np.asarray(Image.open(tmp_path / "out" / f"p{seed}_cutout.png"))
        assert rgba.shape == (*written.shape, 4)
        assert (rgba[..., 3][written == 0] < 128).all() and (rgba[..., 3][written == 255] >= 128).all()


def test_a_threshold_moves_the_mask_and_a_bad_colour_or_threshold_is_one_line(spread_run, tmp_path):
    from synthetic import photo

    Image.fromarray(photo(90, 70, 1)).save(tmp_path / "p.jpg")
    assert invoke_cli("infer", "p.jpg", "--run", str(spread_run), "-o", "half.png", cwd=tmp_path).returncode == 0
    result = invoke_cli("infer", "p.jpg", "--run", str(spread_run), "-o", "high.png", "--threshold", "0.8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    half, high = (np.asarray(Image.open(tmp_path / name)) != 0 for name in ("half.png", "high.png"))
    assert high.sum() < half.sum() and not (high & ~half).any()
    for flags, message in ((["--background", "sky"], "--background expects a colour"), (["--threshold", "1.5"], "--threshold must be")):
        result = invoke_cli("infer", "p.jpg", "--run", str(spread_run), "-o", "x.png", *flags, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_pet_mask_cuts_where_the_threshold_says(threshold):
    levels = np.arange(256, dtype=np.uint8)
    mask = pet_mask(levels, threshold)
    assert (mask[levels / 255 >= threshold] == 255).all() and (mask[levels / 255 < threshold - 1 / 255] == 0).all()
