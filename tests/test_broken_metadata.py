"""Photos with damaged EXIF, XMP or ICC blocks keep their pixels: the block counts as absent, with one
warning line; a file that is not a readable image is the project's DecodeError and nothing else."""

import io

import numpy as np
from PIL import Image

from conftest import invoke_cli
from metadata_fuzz import broken_exif, cases, jpeg_with_broken_exif, jpeg_with_metadata, photo, png_with_metadata
from petseg_cli.data.images import DecodeError, decode_rgb, read_rgb, without_metadata
from petseg_cli.data.oxford_pet import load_split, split_samples
from synthetic import make_dataset

FUZZ_CASES = 2400
DIHEDRAL = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (False, True)]


def clean_pixels(data: bytes) -> np.ndarray:
    """What the file's pixels decode to, without any of its metadata (so unrotated)."""
    return np.asarray(Image.open(io.BytesIO(without_metadata(data))).convert("RGB"))


def test_the_generated_photos_carry_every_block_and_decode_oriented():
    pixels = photo(np.random.default_rng(1))
    for data, _ in (jpeg_with_metadata(pixels), png_with_metadata(pixels)):
        info = Image.open(io.BytesIO(data)).info
        assert {"exif", "icc_profile"} <= set(info) and ("xmp" in info or "XML:com.adobe.xmp" in info)
        seen = []
        assert decode_rgb(data, "x", warn=seen.append).shape == (32, 24, 3) and seen == []  # orientation 6


def test_fuzzed_metadata_gives_an_rgb_photo_with_its_pixels_or_a_decode_error():
    made = cases(FUZZ_CASES, seed=21)
    clean = {kind: clean_pixels(made[i].data) for i, kind in enumerate(("jpeg", "png"))}
    outcomes = {"photo": 0, "warned": 0, "DecodeError": 0}
    for case in made:
        warnings = []
        try:
            array = decode_rgb(case.data, case.description, warn=warnings.append)
        except DecodeError:
            outcomes["DecodeError"] += 1
            continue
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, case.description
        reference = clean[case.description.split()[0]]
        assert any(t(reference).shape == array.shape and np.array_equal(t(reference), array) for t in DIHEDRAL), case.description
        assert len(warnings) <= 1, (case.description, warnings)
        outcomes["photo"] += 1
        outcomes["warned"] += len(warnings)
    assert outcomes["photo"] + outcomes["DecodeError"] == FUZZ_CASES
    assert outcomes["warned"] > 0  # the fuzz reaches the parsers that used to raise


def test_a_broken_exif_block_counts_as_absent_with_one_warning(tmp_path):
    pixels = photo(np.random.default_rng(2), 30, 40)
    path = tmp_path / "broken.jpg"
    path.write_bytes(jpeg_with_broken_exif(pixels))
    warnings = []
    array = read_rgb(path, exif_orientation=True, warn=warnings.append)
    assert array.shape == (30, 40, 3)  # its orientation (6) is lost with the rest of the block
    assert np.array_equal(array, clean_pixels(path.read_bytes()))  # the file's own pixels
    assert len(warnings) == 1 and "broken.jpg" in warnings[0] and "EXIF" in warnings[0]


def test_the_data_path_decodes_a_broken_exif_photo(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=8, n_test=2, size=(40, 48))
    sample = split_samples(root, "train")[0]
    Image.open(sample.image_path).convert("RGB").save(sample.image_path, quality=95, exif=broken_exif())
    assert len(load_split(root, "train", 32, cache=False)) == len(split_samples(root, "train"))


def test_infer_over_good_broken_exif_and_unreadable_files(tiny_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(photo(rng, 30, 40)).save(photos / "good.jpg")
    (photos / "broken-exif-1.jpg").write_bytes(jpeg_with_broken_exif(photo(rng, 30, 40)))
    (photos / "broken-exif-2.jpg").write_bytes(jpeg_with_broken_exif(photo(rng, 20, 24)))
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not a picture\n")
    result = invoke_cli("infer", str(photos), "-o", str(tmp_path / "out"), "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    masks = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert masks == ["broken-exif-1.png", "broken-exif-2.png", "good.png"]
    assert Image.open(tmp_path / "out" / "broken-exif-2.png").size == (24, 20)
    lines = result.stderr.splitlines()
    for unreadable in ("empty.jpg", "notes.png"):
        assert len([line for line in lines if unreadable in line]) == 1, result.stderr
    for broken in ("broken-exif-1.jpg", "broken-exif-2.jpg"):
        assert len([line for line in lines if broken in line and "warning" in line]) == 1, result.stderr
