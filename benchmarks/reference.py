"""The reference pipeline, reproduced plainly: the yardstick petseg's speed is measured against.

What the reference report trained with: float32, eager, NCHW, torch's default thread count, every epoch
decoding each JPEG and trimap from disk with PIL and resizing it to 256x256, the same four
albumentations augmentations, a DataLoader with the platform's default workers, Adam + cross-entropy.
Same models (petseg's), same batch size, same images (the train split petseg uses). Do not slow it down,
and do not speed it up: it stands for what a user had before petseg.

    python benchmarks/reference.py --data-dir ../shared/data/oxford-pet-sample --model unet -b 8 -e 2
    python benchmarks/reference.py --data-dir DIR --smoke     # 32 px, 8 images, 1 epoch: the same code in seconds

prints one JSON line per epoch: {"epoch", "images", "seconds", "images_per_s", "train_loss"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import parse_args  # noqa: E402
from petseg_cli.models import build_model  # noqa: E402  (the same models)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def train_names(data_dir: Path) -> list[str]:
    """trainval.txt lines whose index % 10 != 0, as petseg's train split."""
    lines = (data_dir / "annotations" / "trainval.txt").read_text().splitlines()
    names = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    return [name for i, name in enumerate(names) if i % 10 != 0]


class PetDataset(Dataset):
    def __init__(self, data_dir: Path, names: list[str], size: int, transform: A.Compose) -> None:
        self.data_dir, self.names, self.size, self.transform = data_dir, names, size, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        image = Image.open(self.data_dir / "images" / f"{name}.jpg").convert("RGB")
        trimap = Image.open(self.data_dir / "annotations" / "trimaps" / f"{name}.png")
        image = np.array(image.resize((self.size, self.size), Image.BILINEAR))
        trimap = np.array(trimap.resize((self.size, self.size), Image.NEAREST))
        mask = ((trimap == 1) | (trimap == 3)).astype(np.uint8)
        out = self.transform(image=image, mask=mask)
        image = (out["image"].astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(out["mask"]).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="resnet34-unet")
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("-e", "--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N train images only (0: all)")
    args = parse_args(parser, smoke={"model": "unet", "batch_size": 4, "epochs": 1, "image_size": 32, "limit": 8})

    torch.manual_seed(args.seed)
    transform = A.Compose(
        [A.HorizontalFlip(p=0.5), A.RandomRotate90(p=0.5), A.GridDistortion(p=0.5), A.RandomBrightnessContrast(p=0.2)]
    )
    names = train_names(args.data_dir)
    dataset = PetDataset(args.data_dir, names[: args.limit or None], args.image_size, transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    model = build_model(args.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, args.epochs + 1):
        model.train()
        total, seen, start = 0.0, 0, time.perf_counter()
        for images, masks in loader:
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(images)
            seen += len(images)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "images": seen, "seconds": round(seconds, 3),
                  "images_per_s": round(seen / seconds, 3), "train_loss": total / seen}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
