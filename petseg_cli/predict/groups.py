"""Scores by group: per breed (from the file stem, as the release names its photos) or per species (the
split file's SPECIES column): mean and pooled Dice, IoU, the count, and the three worst photos."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.oxford_pet import Sample
    from .metrics import SegmentationScores

GROUPINGS = ("breed", "species")
SPECIES_NAMES = {1: "cat", 2: "dog"}
WORST = 3


def group_of(sample: "Sample", by: str) -> str:
    if by == "species":
        return SPECIES_NAMES.get(sample.species, "unknown")
    return sample.name.rsplit("_", 1)[0]  # Abyssinian_5 -> Abyssinian, american_bulldog_12 -> american_bulldog


@dataclass(frozen=True)
class GroupScores:
    group: str
    count: int
    dice: float  # mean per image
    pooled_dice: float  # over every pixel of the group's images
    iou: float  # mean per image
    worst: list[tuple[str, float]]  # the lowest-Dice photos, lowest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_scores(samples: list["Sample"], scores: "SegmentationScores", by: str) -> list[GroupScores]:
    """One row per group, in the order of the groups' names."""
    members: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        members.setdefault(group_of(sample, by), []).append(index)
    rows = []
    for group, indices in sorted(members.items()):
        inter = sum(scores.intersections[i] for i in indices)
        sizes = sum(scores.predicted_pixels[i] + scores.truth_pixels[i] for i in indices)
        worst = sorted(indices, key=lambda i: scores.dice[i])[:WORST]
        rows.append(
            GroupScores(
                group=group,
                count=len(indices),
                dice=sum(scores.dice[i] for i in indices) / len(indices),
                pooled_dice=2 * inter / sizes if sizes else 1.0,
                iou=sum(scores.iou[i] for i in indices) / len(indices),
                worst=[(samples[i].name, scores.dice[i]) for i in worst],
            )
        )
    return rows


def groups_csv(by: str, rows: list[GroupScores], digits: int = 6) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([by, "images", "dice", "pooled_dice", "iou", "worst"])
    for r in rows:
        worst = " ".join(f"{name}:{dice:.4f}" for name, dice in r.worst)
        writer.writerow([r.group, r.count, *(f"{v:.{digits}f}" for v in (r.dice, r.pooled_dice, r.iou)), worst])
    return buffer.getvalue()
