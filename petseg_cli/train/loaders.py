"""The training data: the splits (or the part of them the settings ask for) and each process's loaders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..console import info, warn
from ..data.dataset import SeededShuffleSampler, SegmentationDataset
from ..data.oxford_pet import LoadedSplit, load_split, split_samples, subset_sizes
from ..data.transforms import build_augmentation
from ..machine.distributed import Context
from ..settings import Settings


def load_data(settings: Settings, data_dir: Path) -> dict[str, LoadedSplit]:
    """The train and val splits, or the part of them that ``data.fraction`` and ``data.limit`` ask for."""
    d = settings.data
    listed = {split: len(split_samples(data_dir, split)) for split in ("train", "val")}
    keep = dict(zip(listed, subset_sizes(listed["train"], listed["val"], d.fraction, d.limit)))
    if keep != listed:
        info(f"training on part of the data: {keep['train']} of {listed['train']} train and {keep['val']} of {listed['val']} val images")
    splits = {}
    for split in ("train", "val"):
        loaded = load_split(
            data_dir, split, d.image_size, warn=warn, cache=d.cache, keep=keep[split], seed=settings.train.seed
        )
        if loaded.skipped:
            warn(f"{len(loaded.skipped)} file(s) skipped in the {split} split")
        splits[split] = loaded
    return splits


def make_loaders(
    settings: Settings, splits: dict[str, LoadedSplit], workers: int, device: torch.device, dist: Context
) -> tuple[DataLoader, DataLoader]:
    """Each process's share of every batch: the same global order whatever the number of processes."""
    t = settings.train
    batch = dist.per_rank_batch(t.batch_size)
    augmentation = build_augmentation(settings.augment, settings.data.image_size)
    train_set = SegmentationDataset(splits["train"].images, splits["train"].masks, augmentation)
    val_set = SegmentationDataset(splits["val"].images, splits["val"].masks)
    sampler = SeededShuffleSampler(len(train_set), t.seed, num_replicas=dist.world_size, rank=dist.rank)
    common = {
        "batch_size": batch,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    # A last batch of one image would break BatchNorm in training mode: drop it.
    lone_last = len(sampler) % batch == 1 and len(sampler) > 1
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=lone_last, **common)
    # Validation: each process scores every world_size-th image, none twice.
    val_indices = range(dist.rank, len(val_set), dist.world_size)
    val_loader = DataLoader(val_set, sampler=val_indices, **common)
    return train_loader, val_loader
