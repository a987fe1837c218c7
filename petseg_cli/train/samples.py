"""A few validation images at training size, through the model already in memory, drawn as overlays
(the prediction tinted red, the truth outlined green): what a tracker shows of each epoch; and the
callback that logs each epoch to the trackers."""

from __future__ import annotations

import numpy as np
import torch

from ..predict.overlay import TRUTH_RGB, draw, prediction_overlay
from ..run.trackers import Trackers
from .callbacks import Callback, Loop
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


class Tracking(Callback):
    """Each epoch's record, and samples of it, logged to the run's trackers: after its files, so that a
    tracker never holds an epoch the run does not."""

    def __init__(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def on_epoch_end(self, loop: Loop) -> None:
        self.trackers.log_epoch(loop.record, samples=lambda: sample_overlays(loop.training))
