"""The decode cache under a concurrent rebuild: older entries of a split go, the `--limit` entries of the
same split stay, and no reader loses an entry it has found (checked with two processes, no timing)."""

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import REPO
from petseg_cli.data.cache import CACHE_DIRNAME, is_entry_of
from petseg_cli.data.oxford_pet import load_split, split_samples
from synthetic import make_dataset

SIZE = 32
KEY = "0123456789abcdef0123"

# A second process: it holds the readers' lock, or maps the split's entry; says so; waits for a line on
# stdin; then prints the checksum of what it mapped.
HOLDER = (
    "import hashlib, sys; from pathlib import Path\n"
    "from petseg_cli.data import cache\n"
    "from petseg_cli.data.oxford_pet import load_split\n"
    "root, what = Path(sys.argv[1]), sys.argv[2]\n"
    "if what == 'lock':\n"
    "    with cache._reading(root / cache.CACHE_DIRNAME):\n"
    "        print('ready', flush=True); sys.stdin.readline()\n"
    "else:\n"
    "    s = load_split(root, 'train', int(sys.argv[3]))\n"
    "    print('ready', flush=True)\n"
    "    sys.stdin.readline()\n"
    "    print(hashlib.sha256(s.images.tobytes() + s.masks.tobytes()).hexdigest(), flush=True)\n"
)


def entries(root):
    return sorted(p.name for p in (root / CACHE_DIRNAME).iterdir() if not p.name.startswith("."))


def touch_one_image(root, index=0):
    """A changed file: the split's key changes, so the next load builds a new entry."""
    path = split_samples(root, "train")[index].image_path
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def checksum(split):
    return hashlib.sha256(split.images.tobytes() + split.masks.tobytes()).hexdigest()


def start_holder(root, *args):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), *args], env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("ready"), process.stderr.read()
    return process


@pytest.mark.parametrize(
    ("name", "tag", "expected"),
    [
        (f"train-256-{KEY}", "train-256", True),
        (f"train-256-part40-{KEY}", "train-256", False),
        (f"train-256-part40-{KEY}", "train-256-part40", True),
        (f"train-2560-{KEY}", "train-256", False),
        (f"train-256-{KEY}x", "train-256", False),
        (f".train-256-{KEY}.abc.building", "train-256", False),
    ],
)
def test_an_entry_belongs_to_its_own_tag_only(name, tag, expected):
    assert is_entry_of(name, tag) is expected


def test_building_the_whole_split_keeps_the_limit_entries(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=14, n_test=2, size=(40, 48))
    load_split(root, "train", SIZE, keep=5)
    load_split(root, "train", SIZE)
    first = entries(root)
    assert len(first) == 2 and any("-part5-" in e for e in first)
    touch_one_image(root)
    load_split(root, "train", SIZE)  # the whole split again: its old entry goes, the part entry stays
    second = entries(root)
    part = [e for e in first if "-part5-" in e]
    assert len(second) == 2 and set(part) < set(second) and set(first) - set(part) - set(second)


def test_a_reader_opening_an_entry_keeps_it_through_a_rebuild_in_another_process(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=14, n_test=2, size=(40, 48))
    load_split(root, "train", SIZE)
    (old,) = entries(root)
    reader = start_holder(root, "lock")  # between finding the entry and mapping it
    try:
        touch_one_image(root)
        rebuilt = load_split(root, "train", SIZE)
        assert old in entries(root) and len(entries(root)) == 2  # not deleted under the reader
    finally:
        reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0
    assert checksum(rebuilt) == checksum(load_split(root, "train", SIZE, cache=False))
    touch_one_image(root)
    load_split(root, "train", SIZE)  # no reader now: the next build deletes both older entries
    assert len(entries(root)) == 1 and old not in entries(root)


def test_a_mapped_entry_deleted_by_a_rebuild_in_another_process_still_reads_whole(tmp_path):
    root = make_dataset(tmp_path / "d", n_trainval=14, n_test=2, size=(40, 48))
    expected = checksum(load_split(root, "train", SIZE))
    (old,) = entries(root)
    reader = start_holder(root, "map", str(SIZE))
    touch_one_image(root)
    load_split(root, "train", SIZE)
    assert old not in entries(root)  # the reader had mapped it: deleting it was allowed
    out, err = reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0, err
    assert out.split() == [expected]
