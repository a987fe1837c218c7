"""The recipe knobs of issue 37's ablation: weighted loss terms, label smoothing, the Lovász hinge (checked
against the Jaccard loss it extends), CutMix, Schedule-Free AdamW. Each is a registry entry that checks its
own values, and each trains a tiny epoch and resumes."""

from __future__ import annotations

import itertools
import json
import math
import tomllib

import pytest
import torch

from petseg_cli.base.errors import UsageError
from petseg_cli.models.losses import build_loss, lovasz_hinge_loss, soft_dice_loss
from petseg_cli.config.settings import TrainSettings, load_settings
from petseg_cli.train.validation import validate_settings


def train_and_resume(dataset, tmp_path, knobs: dict):
    """A 32 px run on 4 photos, batch 2, with ``knobs`` ({section: {key: value}}): one epoch, then resumed to
    a second (its config.toml must hold the knobs); the run's directory."""
    from petseg_cli.train import train, train_settings

    table = {
        "data": {"data_dir": str(dataset), "image_size": 32, "limit": 4},
        "train": {"epochs": 1, "batch_size": 2, "precision": "fp32", "keep_optimizer": True, "runs_dir": str(tmp_path)},
    }
    for section, values in knobs.items():
        table[section] = {**table.get(section, {}), **values}
    run = train(load_settings(overrides=table)).run_dir
    resumed = train(train_settings(None, {"train": {"epochs": 2}}, resume=run), resume=run)
    assert resumed.stop_reason == "completed"
    epochs = json.loads((run / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(math.isfinite(e["train_loss"]) for e in epochs)
    config = tomllib.loads((run / "config.toml").read_text())
    assert {section: {k: config[section][k] for k in values} for section, values in knobs.items()} == knobs
    return run


def logits_and_masks(seed=0, n=3, size=6):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, size, size, generator=generator), torch.randint(0, 2, (n, size, size), generator=generator)


def test_default_loss_is_the_plain_sum_of_ce_and_dice():
    logits, masks = logits_and_masks()
    expected = torch.nn.functional.cross_entropy(logits, masks) + soft_dice_loss(logits, masks)
    assert torch.equal(build_loss(TrainSettings())(logits, masks), expected)


def test_loss_weights_and_label_smoothing_weigh_their_terms():
    logits, masks = logits_and_masks()
    ce = torch.nn.functional.cross_entropy(logits, masks)
    weighted = build_loss(TrainSettings(ce_weight=0.375, dice_weight=1.125))(logits, masks)
    assert torch.allclose(weighted, 0.375 * ce + 1.125 * soft_dice_loss(logits, masks))
    smoothed = build_loss(TrainSettings(loss="ce", label_smoothing=0.1))(logits, masks)
    assert torch.allclose(smoothed, torch.nn.functional.cross_entropy(logits, masks, label_smoothing=0.1))
    assert not torch.allclose(smoothed, ce)


@pytest.mark.parametrize("train, message", [
    ({"dice_weight": 2.0, "loss": "ce"}, "train.dice_weight = 2.0 weighs a dice term, which --loss ce does not have"),
    ({"ce_weight": 0.0}, "train.ce_weight must be positive"),
    ({"label_smoothing": 1.0}, r"train.label_smoothing must be in \[0, 1\)"),
    ({"label_smoothing": 0.1, "loss": "dice"}, "train.label_smoothing smooths the cross-entropy, which --loss dice"),
    ({"loss": "focal"}, "--loss must be one of ce, dice, ce\\+dice, lovasz, ce\\+lovasz"),
])
def test_the_loss_registry_refuses_what_it_cannot_use(train, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        validate_settings(load_settings(overrides={"train": train}))


def jaccard_loss(truth: torch.Tensor, mistakes: torch.Tensor) -> float:
    """1 - IoU when the pixels ``mistakes`` are predicted wrong (the others right): the set function."""
    predicted = truth ^ mistakes
    union = (truth | predicted).sum().item()
    return 1 - (truth & predicted).sum().item() / union if union else 0.0


def test_lovasz_hinge_equals_the_jaccard_loss_at_binary_predictions():
    """At errors of exactly 0 or 1 (pet logit +-1 on the right side, or 0) the Lovász extension is the
    Jaccard loss of the set of mistakes: every subset of a 2x3 image, for two ground truths."""
    for truth in (torch.tensor([[1, 1, 0], [0, 1, 0]]), torch.tensor([[0, 0, 0], [0, 1, 0]])):
        sign = 2 * truth.float() - 1
        for bits in itertools.product((0, 1), repeat=truth.numel()):
            mistakes = torch.tensor(bits).view_as(truth).bool()
            pet_logit = torch.where(mistakes, torch.zeros_like(sign), sign)  # error 1 where wrong, 0 where right
            logits = torch.stack([torch.zeros_like(pet_logit), pet_logit])[None]
            got = lovasz_hinge_loss(logits, truth[None]).item()
            assert got == pytest.approx(jaccard_loss(truth.bool(), mistakes), abs=1e-6), bits


def test_lovasz_hinge_is_the_lovasz_extension_of_the_jaccard_loss_at_any_errors():
    """Against the extension's definition (Berman et al. 2018, eq. 8): sum over the errors sorted in
    decreasing order of (m_i - m_i+1) times the Jaccard loss of the i largest, per image, averaged."""
    logits, masks = logits_and_masks(seed=1, n=2, size=3)
    expected = []
    for image_logits, truth in zip(logits, masks):
        truth = truth.flatten().bool()
        errors = torch.relu(1 - (image_logits[1] - image_logits[0]).flatten() * (2 * truth.float() - 1))
        order = torch.argsort(errors, descending=True)
        total, mistakes = 0.0, torch.zeros_like(truth)
        for i, pixel in enumerate(order):
            mistakes[pixel] = True
            following = errors[order[i + 1]].item() if i + 1 < len(order) else 0.0
            total += (errors[pixel].item() - following) * jaccard_loss(truth, mistakes)
        expected.append(total)
    assert lovasz_hinge_loss(logits, masks).item() == pytest.approx(sum(expected) / len(expected), abs=1e-5)


# Two runs cover every knob (a training costs seconds): schedule-free AdamW excludes SAM, and the rest combine.
TOGETHER = {
    "train": {"loss": "ce+lovasz", "ce_weight": 0.375, "lovasz_weight": 1.5, "label_smoothing": 0.1, "sam_rho": 0.05,
              "optimizer": "adamw", "scheduler": "cosine"},
    "augment": {"cutmix": 0.5, "copy_paste": 0.5},
    "data": {"train_on_val": True},
}
SCHEDULE_FREE = {"train": {"optimizer": "schedulefree-adamw", "scheduler": "constant"}}


@pytest.mark.slow  # two short trainings: several seconds
@pytest.mark.parametrize("knobs", [pytest.param(TOGETHER, id="loss-weights+smoothing+lovasz+sam+cutmix+copy-paste+refit"),
                                   pytest.param(SCHEDULE_FREE, id="schedulefree-adamw")])
def test_the_knobs_train_a_tiny_epoch_and_resume(knobs, dataset, tmp_path, monkeypatch):
    if knobs is SCHEDULE_FREE:
        pytest.importorskip("schedulefree")
    monkeypatch.chdir(tmp_path)
    run = train_and_resume(dataset, tmp_path, knobs)
    if knobs is SCHEDULE_FREE:  # saved after validating: at the averaged point x
        saved = torch.load(run / "last.pth", weights_only=True)["optimizer"]
        assert saved["param_groups"][0]["train_mode"] is False
    else:  # SAM's step count, resumed: two steps an epoch (4 photos + 1 of val, batch 2, the lone last one dropped)
        assert torch.load(run / "last.pth", weights_only=True)["optimizer"]["sam_steps"] == 4


def photos(count=3, size=16):
    """Photo k is all value 10 + k; its pet a square at (2k, 2k), 6 pixels wide."""
    import numpy as np

    images = np.stack([np.full((size, size, 3), 10 + k, np.uint8) for k in range(count)])
    masks = np.zeros((count, size, size), np.uint8)
    for k in range(count):
        masks[k, 2 * k : 2 * k + 6, 2 * k : 2 * k + 6] = 1
    return images, masks


def mixed(cutmix, copy_paste, seed):
    from petseg_cli.data.dataset import SegmentationDataset
    from petseg_cli.data.transforms import Mixing

    images, masks = photos()
    image, mask = SegmentationDataset(images, masks, None, Mixing(cutmix, copy_paste))[0, seed]
    return images, masks, image.permute(1, 2, 0).numpy(), mask.numpy()


def test_mixing_is_off_by_default_and_the_same_for_the_same_seed():
    from petseg_cli.data.transforms import build_mixing
    from petseg_cli.config.settings import AugmentSettings

    assert build_mixing(AugmentSettings()) is None  # off: no random number drawn, training as before
    assert build_mixing(AugmentSettings(cutmix=0.5, enabled=False)) is None
    first, second = mixed(0.5, 0.5, 7), mixed(0.5, 0.5, 7)
    assert (first[2] == second[2]).all() and (first[3] == second[3]).all()


def pasted(cutmix, copy_paste, seeds=range(20)):
    """For each seed whose item took pixels from another photo: the masks, the item's mask, the pixels
    changed and the photo they came from (photo k is all 10 + k)."""
    for seed in seeds:
        images, masks, image, mask = mixed(cutmix, copy_paste, seed)
        changed = image[..., 0] != images[0, ..., 0]
        if changed.any():  # else the partner drawn was the photo itself
            yield masks, mask, changed, int(image[changed][0, 0]) - 10


def test_copy_paste_pastes_another_photo_s_pet_into_image_and_mask():
    found = list(pasted(0.0, 1.0))
    for masks, mask, changed, partner in found:
        assert (changed == (masks[partner] == 1)).all()  # exactly the partner's pet, whatever was under it
        assert (mask == ((masks[0] == 1) | (masks[partner] == 1))).all()
    assert len(found) >= 5


def test_cutmix_pastes_a_box_of_another_photo_with_its_mask():
    import numpy as np

    found = list(pasted(1.0, 0.0))
    for masks, mask, changed, partner in found:
        rows, columns = np.where(changed)
        box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
        assert changed[box].all() and changed.sum() == changed[box].size  # one rectangle
        assert 0.1 * 0.8 <= changed.mean() <= 0.5 * 1.2  # its share of the area, rounded to whole pixels
        assert (mask[box] == masks[partner][box]).all() and (mask[~changed] == masks[0][~changed]).all()
    assert len(found) >= 5


def test_schedule_free_adamw_follows_the_model_s_modes_and_trains_at_another_point():
    """optimizer.train() with the model's train(), optimizer.eval() with its eval(): the weights validated
    and saved (x) differ from those the steps train (y), and switching back and forth restores them."""
    pytest.importorskip("schedulefree")
    from petseg_cli.train.optim import build_optimizer, follow_model_modes

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    optimizer = build_optimizer(model.parameters(), TrainSettings(optimizer="schedulefree-adamw", scheduler="constant"), "cpu")
    follow_model_modes(model, optimizer)
    images, masks = torch.rand(4, 3, 8, 8), torch.randint(0, 2, (4, 8, 8))
    model.train()
    assert optimizer.param_groups[0]["train_mode"]
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), masks).backward()
        optimizer.step()
    y = [p.detach().clone() for p in model.parameters()]
    model.eval()
    assert not optimizer.param_groups[0]["train_mode"]
    x = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(x, y))
    model.train()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), y))


def test_the_optimiser_registry_refuses_schedule_free_with_a_schedule_or_an_ema_or_without_its_package(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    free = {"optimizer": "schedulefree-adamw", "scheduler": "constant"}
    for extra, message in (({"scheduler": "cosine"}, "add --scheduler constant .* or --optimizer adamw for --scheduler cosine"),
                           ({"ema": 0.99}, "add --ema 0, or --optimizer adamw --learning-rate 3e-4 --scheduler cosine for an EMA")):
        with pytest.raises(UsageError, match=message):
            validate_settings(load_settings(overrides={"train": {**free, **extra}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "schedulefree" else real(name, *a))
    with pytest.raises(UsageError, match=r"needs the schedulefree package: pip install \"petseg\[recipes\]\""):
        validate_settings(load_settings(overrides={"train": free}))


def test_the_constant_schedule_warms_up_then_holds_the_peak_rate():
    from petseg_cli.train.optim import Horizon, build_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, TrainSettings(scheduler="constant", warmup_epochs=1), Horizon(3, 4))
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 9)


def test_sam_takes_every_second_step_from_the_gradient_at_the_moved_weights():
    """On f(w) = sum(c w^2) with SGD: step 1 is SGD's own; step 2 uses the gradient at w + rho g/|g|."""
    from petseg_cli.train.optim import sharpness_aware

    c, lr, rho = torch.tensor([1.0, 3.0]), 0.1, 0.05
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    optimizer = sharpness_aware(torch.optim.SGD([w], lr=lr), rho, every=2)

    def closure():
        optimizer.zero_grad()
        loss = (c * w**2).sum()
        loss.backward()
        return loss

    gradient = lambda v: 2 * c * v  # noqa: E731
    expected = torch.tensor([1.0, -2.0])
    for step in (1, 2, 3, 4):
        closure()
        optimizer.step(closure)
        g = gradient(expected)
        if step % 2 == 0:
            g = gradient(expected + rho * g / g.norm())
        expected = expected - lr * g
        assert torch.allclose(w.detach(), expected, atol=1e-6), step
    state = optimizer.state_dict()
    again = sharpness_aware(torch.optim.SGD([w], lr=lr), rho, every=2)
    again.load_state_dict(state)
    assert again.steps == 4


def test_sam_settings_are_checked_by_the_optimiser_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adamw = {"optimizer": "adamw", "scheduler": "cosine"}
    for train, message in (({"sam_rho": -0.1}, "train.sam_rho must be 0"), ({"sam_rho": 0.05, "precision": "fp16", **adamw}, "not with|fp16"),
                           ({"sam_rho": 0.05}, "wraps adam or adamw, not --optimizer schedulefree-adamw .*add --optimizer adamw --learning-rate 3e-4 --scheduler cosine")):
        with pytest.raises(UsageError, match=message):
            validate_settings(load_settings(overrides={"train": train}))


def test_train_on_val_trains_on_both_splits_at_every_size(dataset, tmp_path, monkeypatch):
    from petseg_cli.train.loaders import load_part, subset

    monkeypatch.chdir(tmp_path)
    table = {"data": {"data_dir": str(dataset), "limit": 6}}
    plain = load_settings(overrides=table)
    refit = load_settings(overrides={"data": {**table["data"], "train_on_val": True}})
    keep = subset(plain, dataset, say=False)
    for size in (32, 64):  # the run's size, and a size schedule's smaller one
        train = load_part(plain, dataset, "train", size, keep["train"])
        val = load_part(plain, dataset, "val", size, keep["val"])
        both = load_part(refit, dataset, "train", size, keep["train"])
        assert [s.name for s in both.samples] == [s.name for s in train.samples + val.samples]
        assert (both.images[len(train):] == val.images).all() and (both.masks[: len(train)] == train.masks).all()
