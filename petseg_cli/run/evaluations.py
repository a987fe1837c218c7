"""What ``petseg evaluate`` writes into a run, named by what it measured: the split, the weights, the size
scored at, TTA, the model that computed (the run's own, or an exported file on a runtime: ``-model-openvino-bf16``)
and the data set. The run's own data set (the one it trained on) keeps the plain names,
``eval-test-best-original.json``; any other gets ``-on-<data set>`` in every file's name, so scoring
another data set never replaces the run's own figures. A data set is its directory and a fingerprint of
its split lists (``DataSet``): two copies of a directory with the same lists are the same data set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import PetsegError, UsageError
from .layout import AT_ORIGINAL, DEFAULT_WEIGHTS, read_json

EVALUATION_FILES = {
    "json": "eval-{tag}.json", "csv": "eval-{tag}.csv", "samples": "samples-{tag}.png",
    "groups": "eval-{tag}-by-{by}.csv", "reliability": "reliability-{tag}.png",
}
EVALUATION_JSON_GLOB = "eval-*.json"  # every evaluation's figures, whatever it measured
AT_TAGS = {AT_ORIGINAL: "original", "training": "training-size"}
OTHER_DATA = "-on-"  # between an evaluation's tag and another data set's key
FINGERPRINT_DIGITS = 8


@dataclass(frozen=True)
class DataSet:
    """A data set as evaluations name it: its directory and a fingerprint of its split lists."""

    directory: Path
    fingerprint: str

    @classmethod
    def of(cls, directory: Path) -> "DataSet":
        from ..data.oxford_pet import SPLITS, split_list_path

        digest = hashlib.sha256()
        for path in dict.fromkeys(split_list_path(directory, split) for split in SPLITS):
            digest.update(path.name.encode() + b"\0")
            digest.update(path.read_bytes() if path.is_file() else b"")
        return cls(directory.resolve(), digest.hexdigest()[:FINGERPRINT_DIGITS])

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def key(self) -> str:
        """``other-pets-1a2b3c4d``: the directory's name and the fingerprint, as file names carry it."""
        return f"{self.name}-{self.fingerprint}"

    def to_dict(self, own: bool) -> dict[str, Any]:
        return {"directory": str(self.directory), "fingerprint": self.fingerprint, "key": self.key, "own": own}

    def names(self) -> set[str]:
        """What ``--data NAME`` may call it: its key, its directory's name or its path."""
        return {self.key, self.name, str(self.directory)}


@dataclass(frozen=True)
class Measure:
    """What an evaluation measured; ``data``: None for the run's own data set, else the other's key."""

    split: str = "test"
    weights: str = DEFAULT_WEIGHTS
    at: str = AT_ORIGINAL
    tta: bool = False
    data: str | None = None
    model: str | None = None  # None: the run's own (torch); else an exported file's stem, runtime and precision
    scales: tuple[float, ...] = ()  # multi-scale TTA: the scales of the model's size averaged; (): none

    @property
    def tag(self) -> str:
        """``test-best-original``, ``val-last-training-size-tta-on-other-pets-1a2b3c4d``,
        ``test-best-original-model.int8-openvino-int8``, ``test-best-original-tta-scales-0.75-1-1.25`` …"""
        return (
            f"{self.split}-{self.weights}-{AT_TAGS[self.at]}" + ("-tta" if self.tta else "")
            + ("-scales-" + "-".join(f"{s:g}" for s in self.scales) if self.scales else "")
            + (f"-{self.model}" if self.model else "") + (f"{OTHER_DATA}{self.data}" if self.data else "")
        )

    def file(self, run_dir: Path, kind: str, by: str = "") -> Path:
        """The ``kind`` (json, csv, samples, groups ``by`` breed or species, reliability) file."""
        return run_dir / EVALUATION_FILES[kind].format(tag=self.tag, by=by)


def read_evaluation(run_dir: Path, measure: Measure) -> dict[str, Any] | None:
    """The scores measured so, or None when the run has not been evaluated so."""
    path = measure.file(run_dir, "json")
    try:
        scores = read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(scores, dict):
        raise PetsegError(f"{path} does not hold petseg scores (not a JSON object)")
    return scores


def other_data_keys(run_dir: Path, name: str) -> list[str]:
    """The keys of the other data sets the run was evaluated on that ``name`` (a key, or a directory's name)
    calls, from the names of its evaluation files."""
    keys = set()
    for path in run_dir.glob(f"eval-*{OTHER_DATA}*.json"):
        key = path.stem.split(OTHER_DATA, 1)[1]
        if key == name or key.rsplit("-", 1)[0] == name:
            keys.add(key)
    return sorted(keys)


def find_data(run_dir: Path, own: DataSet | None, name: str | None) -> str | None:
    """The ``Measure.data`` of the data set ``--data NAME`` calls for this run: None for its own (also when
    NAME is not given), else another's key; a UsageError when NAME is ambiguous."""
    if name is None or (own is not None and name in own.names()):
        return None
    keys = other_data_keys(run_dir, Path(name).name if "/" in name else name)
    if len(keys) > 1:
        raise UsageError(f"--data {name} names several data sets {run_dir} was evaluated on: {', '.join(keys)}; pass one of them")
    return keys[0] if keys else name
