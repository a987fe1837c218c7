"""The EMA of the weights: its decay warms up, so a short run's average is a trained model, not its
random start; it averages BatchNorm statistics too and restores its update count."""

import pytest
import torch
from torch import nn

from petseg_cli.predict.metrics import dice_per_image
from petseg_cli.train.ema import WarmEMA

STEPS = 40  # a short run


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def batch(generator):
    images = torch.rand(8, 3, 16, 16, generator=generator)
    return images, (images[:, 0] > 0.5).long()  # pet where the first channel is bright


def dice(model, images, masks):
    model.eval()
    with torch.no_grad():
        return dice_per_image(model(images).argmax(1), masks).mean().item()


def train_with(average):
    """Train the tiny model STEPS steps, ``average`` following it; the model's and the average's val Dice."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = tiny_model()
    ema = average(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        model.train()
        images, masks = batch(generator)
        loss = nn.functional.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    val_images, val_masks = batch(torch.Generator().manual_seed(1))
    return dice(model, val_images, val_masks), dice(ema.module, val_images, val_masks)


class FixedDecay(WarmEMA):
    def current_decay(self):
        return self.decay


def test_a_short_ema_run_scores_like_its_model_and_a_fixed_decay_would_not():
    raw, averaged = train_with(lambda model: WarmEMA(model, 0.99))
    assert raw > 0.9, raw  # the model learnt the task
    assert averaged > raw - 0.05, (raw, averaged)
    _, fixed = train_with(lambda model: FixedDecay(model, 0.99))
    assert fixed < raw - 0.2, (raw, fixed)  # without the warm-up the average is still mostly the random start


def test_the_decay_warms_up_to_the_configured_one():
    ema = WarmEMA(tiny_model(), 0.99)
    decays = []
    for updates in (0, 1, 10, 90, 1000):
        ema.updates = updates
        decays.append(ema.current_decay())
    assert decays == pytest.approx([0.1, 2 / 11, 11 / 20, 0.91, 0.99])


def test_an_update_averages_weights_and_batchnorm_statistics_and_copies_counts():
    torch.manual_seed(0)
    model = tiny_model()
    ema = WarmEMA(model, 0.99)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    model.train()
    model(torch.rand(4, 3, 8, 8))  # moves the BatchNorm statistics and counts a batch
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # decay 0.1: nine tenths of the way to the model
    now, target = ema.state_dict(), model.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(now[key], 0.1 * start[key] + 0.9 * target[key]), key
    assert now["1.num_batches_tracked"] == 1 and ema.updates == 1
    assert all(not p.requires_grad for p in ema.module.parameters())
    copy = WarmEMA(tiny_model(), 0.99)
    copy.load(now, ema.updates)
    assert copy.updates == 1 and all(torch.equal(copy.state_dict()[k], now[k]) for k in now)
