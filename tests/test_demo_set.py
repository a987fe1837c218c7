"""The demo set installed with the package (petseg_cli/data/demo/): small, whole, credited, and named by
``--data-dir demo`` wherever no directory called demo exists."""

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO
from petseg_cli.data.demo_set import DEMO, demo_dir, resolve_data_dir
from petseg_cli.data.oxford_pet import split_samples

MAX_BYTES = 1_000_000


def test_the_demo_set_is_at_most_1_mb_and_credits_the_dataset():
    files = [p for p in demo_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    credits = (demo_dir() / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in credits and "Parkhi" in credits and "https://www.robots.ox.ac.uk/~vgg/data/pets/" in credits


def test_its_split_lists_name_photos_with_trimaps_of_their_size_cats_and_dogs_of_several_breeds():
    samples = {split: split_samples(demo_dir(), split) for split in ("train", "val", "test")}
    assert {split: len(s) for split, s in samples.items()} == {"train": 18, "val": 3, "test": 9}
    everything = [s for split in samples.values() for s in split]
    for sample in everything:
        with Image.open(sample.image_path) as photo, Image.open(sample.trimap_path) as trimap:
            assert photo.format == "JPEG" and photo.mode == "RGB" and max(photo.size) == 160
            assert trimap.size == photo.size, sample.name
            assert set(np.unique(np.asarray(trimap))) <= {1, 2, 3}, sample.name
    for split in samples.values():
        assert {s.species for s in split} == {1, 2}  # cats and dogs in each split
    assert len({s.breed_id for s in everything if s.species == 1}) >= 2
    assert len(list((demo_dir() / "images").iterdir())) == len(everything)  # no photo outside the lists


def test_demo_names_the_installed_set_unless_a_demo_directory_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(DEMO) == demo_dir() == REPO / "petseg_cli" / "data" / "demo"
    assert resolve_data_dir("data/pets") == Path("data/pets")
    (tmp_path / DEMO).mkdir()
    assert resolve_data_dir(DEMO) == Path(DEMO)


def test_validated_settings_hold_the_demo_sets_path_and_any_other_data_dir_as_written(tmp_path, monkeypatch):
    from petseg_cli.config.settings import load_settings
    from petseg_cli.train.validation import validate_settings

    monkeypatch.chdir(tmp_path)
    for given, expected in ((DEMO, str(demo_dir())), ("data/pets/", "data/pets/")):
        assert validate_settings(load_settings(None, {"data": {"data_dir": given}})).data.data_dir == expected


def test_the_package_data_installs_every_file_of_it():
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["petseg_cli.data"]
    package = REPO / "petseg_cli" / "data"
    listed = {p for pattern in patterns for p in package.glob(pattern)}
    assert listed == {p for p in demo_dir().rglob("*") if p.is_file()}
