"""A few validation images at training size, through the model already in memory, drawn as overlays
(the prediction tinted red, the truth outlined green): what a tracker shows of each epoch."""

from __future__ import annotations

import numpy as np
import torch

from ..predict.overlay import TRUTH_RGB, draw, prediction_overlay
from .setup import Training

SAMPLES = 4  # the first images of the val split: the same ones every epoch


@torch.inference_mode()
def sample_overlays(training: Training, count: int = SAMPLES) -> np.ndarray:
    """(N, H, W, 3) uint8: the first ``count`` val images with the validated weights' prediction."""
    dataset = training.val_loader.dataset
    pairs = [dataset[index] for index in range(min(count, len(dataset)))]
    images = torch.stack([image for image, _ in pairs])
    truths = [mask.numpy() for _, mask in pairs]
    net = training.validated.eval()  # not the compiled one: a new batch shape would compile it again
    inputs, _ = training.to_device(images, torch.stack([torch.from_numpy(t) for t in truths]))
    with training.precision.autocast():
        predictions = net(inputs).argmax(1).cpu().numpy()
    photos = images.permute(0, 2, 3, 1).numpy()
    overlays = [
        np.asarray(draw(prediction_overlay(photo, prediction), truth, TRUTH_RGB, tint=False))
        for photo, prediction, truth in zip(photos, predictions, truths)
    ]
    return np.stack(overlays)
