"""Torch datasets over a decoded split, with augmentation that is reproducible per (seed, epoch, image).

The sampler hands the dataset ``(index, augmentation_seed)`` pairs, so the random choices of an image
depend only on the run's seed, the epoch and the image: the same whatever the number of workers, and the
same after an interrupted run is resumed.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SegmentationDataset(Dataset):
    """Items are (image (3, H, W) uint8, mask (H, W) int64); ``mixing`` (data.transforms.Mixing) mixes
    each augmented photo with others of the split."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augmentation: Any | None = None, mixing: Any | None = None) -> None:
        self.images, self.masks, self.augmentation, self.mixing = images, masks, augmentation, mixing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.augmented(index, seed)
        if self.mixing is not None and seed is not None:
            image, mask = self.mixing(image, mask, seed, len(self), self.augmented)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image, torch.from_numpy(np.ascontiguousarray(mask)).long()

    def augmented(self, index: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Photo ``index`` (H, W, 3) and its mask, augmented with ``seed``'s choices."""
        image, mask = self.images[index], self.masks[index]
        if self.augmentation is not None:
            self.augmentation.set_random_seed(seed)
            out = self.augmentation(image=np.asarray(image), mask=np.asarray(mask))
            image, mask = out["image"], out["mask"]
        return image, mask


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % 2**31


class SeededShuffleSampler(Sampler):
    """A shuffled order and one augmentation seed per image, both drawn from (seed, epoch).

    With ``num_replicas`` > 1 (distributed training) each rank takes every ``num_replicas``-th item of
    the same global order, padded to equal length.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
        order = rng.permutation(self.length) if self.shuffle else np.arange(self.length)
        seeds = rng.integers(0, 2**31, size=self.length)
        total = len(self) * self.num_replicas
        order = np.resize(order, total)  # repeat from the start to pad
        for index in order[self.rank : total : self.num_replicas]:
            yield int(index), int(seeds[index])
