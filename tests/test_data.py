import numpy as np
import pytest
from PIL import Image

from petseg_cli.data.images import DecodeError, read_rgb
from petseg_cli.data.oxford_pet import load_split, split_samples, trimap_to_mask
from petseg_cli.base.errors import PetsegError
from synthetic import make_dataset


def test_split_rule_every_tenth_trainval_line_is_validation(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=25, n_test=3, size=(32, 32))
    lines = [l.split()[0] for l in (root / "annotations" / "trainval.txt").read_text().splitlines()]
    val = [s.name for s in split_samples(root, "val")]
    train = [s.name for s in split_samples(root, "train")]
    assert val == [lines[0], lines[10], lines[20]]
    assert train == [n for i, n in enumerate(lines) if i % 10 != 0]
    assert len(split_samples(root, "test")) == 3


def test_split_lists_skip_comments_and_parse_fields(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=3, n_test=2, size=(32, 32))
    listing = root / "annotations" / "test.txt"
    listing.write_text("#Image CLASS-ID SPECIES BREED ID\n\n" + listing.read_text())
    samples = split_samples(root, "test")
    assert [s.name for s in samples] == ["Abyssinian_4", "american_bulldog_5"]
    assert (samples[1].class_id, samples[1].species, samples[1].breed_id) == (2, 2, 1)


def test_trimap_rule_pet_and_border_are_foreground():
    trimap = np.array([[1, 2, 3], [2, 2, 1]], np.uint8)
    np.testing.assert_array_equal(trimap_to_mask(trimap), [[1, 0, 1], [0, 0, 1]])


def test_png_with_alpha_and_gif_under_jpg_names_decode_by_content(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "png.jpg", format="PNG")
    Image.fromarray(np.full((10, 12), 7, np.uint8), "L").convert("P").save(tmp_path / "gif.jpg", format="GIF")
    Image.fromarray(np.full((10, 12), 90, np.uint8), "L").save(tmp_path / "gray.jpg")
    for name in ("png.jpg", "gif.jpg", "gray.jpg"):
        array = read_rgb(tmp_path / name)
        assert array.shape == (10, 12, 3) and array.dtype == np.uint8
    assert read_rgb(tmp_path / "png.jpg")[0, 0, 0] == 200


def test_undecodable_file_raises_decode_error(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(DecodeError, match="bad.jpg"):
        read_rgb(tmp_path / "bad.jpg")


def test_bad_files_are_skipped_with_one_warning_each(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=12, n_test=2, size=(40, 48))
    names = [s.name for s in split_samples(root, "train")]
    (root / "images" / f"{names[0]}.jpg").write_bytes(b"\xff\xd8 truncated")  # corrupt
    (root / "annotations" / "trimaps" / f"{names[1]}.png").unlink()  # missing trimap
    Image.new("L", (10, 10), 2).save(root / "annotations" / "trimaps" / f"{names[2]}.png")  # wrong size
    warnings = []
    loaded = load_split(root, "train", 32, warn=warnings.append)
    assert loaded.skipped == names[:3]
    assert len(warnings) == 3 and all(n in w for n, w in zip(names, warnings))
    assert loaded.images.shape == (len(names) - 3, 32, 32, 3)
    assert loaded.masks.shape == (len(names) - 3, 32, 32)
    assert set(np.unique(loaded.masks)) <= {0, 1}


def test_missing_data_dir_names_the_download_command(tmp_path):
    with pytest.raises(PetsegError, match="petseg download --data-dir"):
        split_samples(tmp_path / "nowhere", "train")
