import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from petseg_cli.data.cache import CACHE_DIRNAME
from petseg_cli.data.oxford_pet import load_split, split_samples
from synthetic import make_dataset

SIZE = 32


def entries(data_dir):
    return sorted(p.name for p in (data_dir / CACHE_DIRNAME).iterdir() if not p.name.startswith("."))


def images_file(data_dir, split="train"):
    (entry,) = [p for p in (data_dir / CACHE_DIRNAME).iterdir() if p.name.startswith(f"{split}-{SIZE}-")]
    return entry / "images.npy"


def assert_same_split(a, b):
    assert [s.name for s in a.samples] == [s.name for s in b.samples] and a.skipped == b.skipped
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_cache_is_built_once_then_memory_mapped_and_equal_to_decoding(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=12, n_test=2, size=(40, 48))
    decoded = load_split(root, "train", SIZE, cache=False)
    assert not (root / CACHE_DIRNAME).exists()

    first = load_split(root, "train", SIZE)
    built = os.stat(images_file(root))
    second = load_split(root, "train", SIZE)
    again = os.stat(images_file(root))
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not rebuilt
    assert isinstance(second.images, np.memmap) and isinstance(second.masks, np.memmap)
    assert_same_split(first, decoded)
    assert_same_split(second, decoded)
    second.images[0] = 0  # copy-on-write: the file keeps its pixels
    assert_same_split(load_split(root, "train", SIZE), decoded)
    load_split(root, "val", SIZE)
    assert len(entries(root)) == 2  # one entry per split and size


def test_skipped_files_are_warned_again_when_the_cache_is_used(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=12, n_test=2, size=(40, 48))
    names = [s.name for s in split_samples(root, "train")]
    (root / "images" / f"{names[0]}.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "annotations" / "trimaps" / f"{names[1]}.png").unlink()
    building, reading = [], []
    first = load_split(root, "train", SIZE, warn=building.append)
    second = load_split(root, "train", SIZE, warn=reading.append)
    assert first.skipped == second.skipped == names[:2]
    assert reading == building and len(reading) == 2 and names[0] in reading[0]
    assert len(second) == len(names) - 2 and second.images.shape[0] == len(names) - 2


def test_cache_is_rebuilt_when_a_file_changes(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=12, n_test=2, size=(40, 48))
    load_split(root, "train", SIZE)
    before = entries(root)
    sample = split_samples(root, "train")[3]
    Image.fromarray(np.full((40, 48, 3), 255, np.uint8)).save(sample.image_path, quality=95)
    changed = load_split(root, "train", SIZE)
    after = entries(root)
    assert after != before and len(after) == 1  # the stale entry is gone
    assert changed.images[3].min() >= 250
    assert_same_split(changed, load_split(root, "train", SIZE, cache=False))
    load_split(root, "train", 64)
    assert len(entries(root)) == 2  # another size is another entry


def test_read_only_data_directory_caches_in_the_user_cache(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d", n_trainval=12, n_test=2, size=(40, 48))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root.chmod(0o555)
    try:
        first = load_split(root, "train", SIZE)
        second = load_split(root, "train", SIZE)
    finally:
        root.chmod(0o755)
    assert not (root / CACHE_DIRNAME).exists()
    (user_root,) = (tmp_path / "xdg" / "petseg").iterdir()
    assert user_root.name.startswith("d-") and len(list(user_root.glob("train-*"))) == 1
    assert_same_split(first, second)


CHECKSUM = (
    "import hashlib, sys; from pathlib import Path\n"
    "from petseg_cli.data.oxford_pet import load_split\n"
    "s = load_split(Path(sys.argv[1]), 'train', int(sys.argv[2]), cache=sys.argv[3] == 'cache')\n"
    "print(hashlib.sha256(s.images.tobytes() + s.masks.tobytes()).hexdigest(), len(s))\n"
)


@pytest.mark.slow
def test_concurrent_builders_share_one_whole_entry(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=60, n_test=2, size=(120, 160))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CHECKSUM, str(root), "96"]
    builders = [
        subprocess.Popen([*command, "cache"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [p.communicate(timeout=300) for p in builders]
    assert all(p.returncode == 0 for p in builders), [err for _, err in results]
    decoded = subprocess.run([*command, "no-cache"], env=env, capture_output=True, text=True, timeout=300)
    assert {out for out, _ in results} == {decoded.stdout}
    assert [p.name for p in (root / CACHE_DIRNAME).iterdir() if p.name not in (".lock", ".readers")] == [entries(root)[0]]


def test_a_file_where_the_cache_goes_means_decoding_in_memory_with_a_warning(tmp_path):
    data = make_dataset(tmp_path / "pets", n_trainval=10, n_test=1, size=(40, 40))
    (data / CACHE_DIRNAME).write_text("not a directory")
    warnings = []
    loaded = load_split(data, "train", SIZE, warn=warnings.append)
    assert_same_split(loaded, load_split(data, "train", SIZE, cache=False))
    assert len(warnings) == 1 and "cannot use the cache" in warnings[0] and "decoding the train split in memory" in warnings[0]
    assert (data / CACHE_DIRNAME).read_text() == "not a directory"


def test_a_full_disk_while_building_means_decoding_in_memory_and_no_half_entry(tmp_path):
    """The cache directory is a 256 KiB tmpfs (private mount namespace): a 256 px split does not fit."""
    data = make_dataset(tmp_path / "pets", n_trainval=10, n_test=1, size=(40, 40))
    cache = data / CACHE_DIRNAME
    cache.mkdir()
    script = (
        "import os, sys; from petseg_cli.data.oxford_pet import load_split\n"
        f"loaded = load_split(__import__('pathlib').Path({str(data)!r}), 'train', 256, warn=print)\n"
        f"print('ROWS', len(loaded), 'LEFT', sorted(os.listdir({str(cache)!r})))\n"
    )
    mount = f"mount -t tmpfs -o size=256k tmpfs {cache}"
    if subprocess.run(["unshare", "--mount", "sh", "-c", mount], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs unshare and mount rights)")
    command = ["unshare", "--mount", "sh", "-c", f"{mount} && exec {sys.executable} -c \"$0\"", script]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot use the cache" in result.stdout and "No space left on device" in result.stdout, result.stdout
    assert "ROWS 9 LEFT ['.lock', '.readers']" in result.stdout, result.stdout  # every train image; no half-built entry
