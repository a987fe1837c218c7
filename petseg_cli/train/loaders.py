"""The training data: the splits (or the part of them the settings ask for) and each process's loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..base.console import info, warn
from ..data.dataset import SeededShuffleSampler, SegmentationDataset
from ..data.oxford_pet import LoadedSplit, load_split, split_samples, subset_sizes
from ..data.transforms import build_augmentation, build_mixing
from ..machine.distributed import Context
from ..config.settings import Settings


def subset(settings: Settings, data_dir: Path, say: bool = True) -> dict[str, int]:
    """How many images of each split a run uses: all, or the part ``data.fraction`` and ``data.limit`` ask for."""
    d = settings.data
    listed = {split: len(split_samples(data_dir, split)) for split in ("train", "val")}
    keep = dict(zip(listed, subset_sizes(listed["train"], listed["val"], d.fraction, d.limit)))
    if keep != listed and say:
        info(f"training on part of the data: {keep['train']} of {listed['train']} train and {keep['val']} of {listed['val']} val images")
    return keep


def check_dataset(data_dir: Path) -> None:
    """That ``data_dir`` holds the release's layout and split lists (only the lists are read): a bad
    directory fails here, in a second, rather than after the machine was measured."""
    for split in ("train", "val"):
        split_samples(data_dir, split)


def load_data(settings: Settings, data_dir: Path) -> dict[str, LoadedSplit]:
    """The train and val splits at the run's image size, or the part of them that ``data.fraction`` and ``data.limit`` ask for."""
    keep = subset(settings, data_dir)
    return {split: load_part(settings, data_dir, split, settings.data.image_size, keep[split]) for split in ("train", "val")}


def load_part(settings: Settings, data_dir: Path, split: str, size: int, keep: int, quiet: bool = False) -> LoadedSplit:
    """``keep`` images of ``split`` at ``size`` (the decode cache holds each size once); ``quiet``: no
    warnings (given when the split was loaded at the run's size)."""
    d = settings.data
    loaded = load_split(data_dir, split, size, warn=None if quiet else warn, cache=d.cache, keep=keep, seed=settings.train.seed)
    if loaded.skipped and not quiet:
        warn(f"{len(loaded.skipped)} file(s) skipped in the {split} split")
    if split == "train" and d.train_on_val:
        return with_val(settings, data_dir, loaded, size, quiet)
    return loaded


def with_val(settings: Settings, data_dir: Path, train: LoadedSplit, size: int, quiet: bool) -> LoadedSplit:
    """``data.train_on_val``: the train split and the val split (the part of it the run uses) as one, for a
    final refit on every labelled photo; validation still scores the val split, which the run now trains on."""
    import numpy as np

    val = load_part(settings, data_dir, "val", size, subset(settings, data_dir, say=False)["val"], quiet=True)
    if not quiet:
        warn(f"training on the train and val splits ({len(train)} + {len(val)} images, data.train_on_val): "
             "its val Dice is measured on photos it trains on and can choose nothing")
    return LoadedSplit(
        "train+val", train.samples + val.samples, np.concatenate([train.images, val.images]),
        np.concatenate([train.masks, val.masks]), train.skipped + val.skipped,
    )


def loader_options(settings: Settings, workers: int, device: torch.device, dist: Context) -> dict[str, Any]:
    return {
        "batch_size": dist.per_rank_batch(settings.train.batch_size),
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }


def train_loader(settings: Settings, split: LoadedSplit, size: int, common: dict[str, Any], dist: Context) -> DataLoader:
    """Each process's share of every batch of ``split`` (decoded at ``size``): the same global order whatever the number of processes."""
    augmentation = build_augmentation(settings.augment, size)
    train_set = SegmentationDataset(split.images, split.masks, augmentation, build_mixing(settings.augment))
    sampler = SeededShuffleSampler(len(train_set), settings.train.seed, num_replicas=dist.world_size, rank=dist.rank)
    # A last batch of one image would break BatchNorm in training mode: drop it.
    lone_last = len(sampler) % common["batch_size"] == 1 and len(sampler) > 1
    return DataLoader(train_set, sampler=sampler, drop_last=lone_last, **common)


def make_loaders(
    settings: Settings, splits: dict[str, LoadedSplit], workers: int, device: torch.device, dist: Context
) -> tuple[DataLoader, DataLoader]:
    """The train and val loaders at the run's image size."""
    common = loader_options(settings, workers, device, dist)
    val_set = SegmentationDataset(splits["val"].images, splits["val"].masks)
    # Validation: each process scores every world_size-th image, none twice.
    val_indices = range(dist.rank, len(val_set), dist.world_size)
    val_loader = DataLoader(val_set, sampler=val_indices, **common)
    return train_loader(settings, splits["train"], settings.data.image_size, common, dist), val_loader
