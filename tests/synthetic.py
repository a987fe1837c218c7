"""Small generated datasets in the Oxford-IIIT Pet release's layout, so tests need no real data.

Each image shows one ellipse (the "pet") of a random colour on a noisy background; its trimap marks
the ellipse 1, the background 2 and a thin ring on the ellipse's edge 3, like the real release.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BREEDS = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("Bengal", 6, 1, 6)]


def make_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.35) * height, rng.uniform(0.15, 0.35) * width
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    trimap = np.full((height, width), 2, np.uint8)
    trimap[r <= 1.0] = 1
    trimap[(r > 0.8) & (r <= 1.2)] = 3
    background = rng.integers(0, 90, (height, width, 3))
    pet = np.array([rng.integers(150, 256), rng.integers(100, 256), rng.integers(0, 120)])
    image = np.where((r <= 1.0)[..., None], pet + rng.integers(-20, 20, (height, width, 3)), background)
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def make_dataset(
    root: Path, n_trainval: int = 20, n_test: int = 10, size: tuple[int, int] = (64, 80), seed: int = 0
) -> Path:
    """Write images/, annotations/trimaps/, trainval.txt and test.txt under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for i in range(n_trainval + n_test):
        breed, class_id, species, breed_id = BREEDS[i % len(BREEDS)]
        name = f"{breed}_{i + 1}"
        image, trimap = make_pair(rng, *size)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        lines["trainval" if i < n_trainval else "test"].append(f"{name} {class_id} {species} {breed_id}")
    for split, entries in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return root


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB array: a bright block in the top third on a noisy dark background (so it has an up)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    image[: height // 3, width // 4 : width // 2] = (240, 200, 60)
    return image
