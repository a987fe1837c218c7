import math

import pytest
import torch

from petseg_cli.predict.metrics import SegmentationScores, dice_per_image, iou_per_image

# One row of four pixels per image; 1 = pet.
OVERLAP = ([1, 1, 0, 0], [1, 0, 1, 0])  # |P∩G| = 1, |P| = 2, |G| = 2
CASES = {
    "half overlap": (*OVERLAP, 2 * 1 / (2 + 2), 1 / 3),
    "identical": ([0, 1, 1, 0], [0, 1, 1, 0], 1.0, 1.0),
    "empty prediction": ([0, 0, 0, 0], [0, 1, 1, 0], 0.0, 0.0),
    "empty target": ([1, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),
    "both empty": ([0, 0, 0, 0], [0, 0, 0, 0], 1.0, 1.0),
    "one inside the other": ([1, 1, 1, 1], [0, 1, 0, 0], 2 * 1 / (4 + 1), 1 / 4),
}


def maps(*rows):
    return torch.tensor([[row] for row in rows])  # (N, 1, 4)


@pytest.mark.parametrize("case", CASES)
def test_dice_and_iou_against_hand_computed_values(case):
    pred, target, dice, iou = CASES[case]
    assert dice_per_image(maps(pred), maps(target)).item() == pytest.approx(dice)
    assert iou_per_image(maps(pred), maps(target)).item() == pytest.approx(iou)


def confident_log_probabilities(pred, p=0.8):
    """(N, 2, 1, 4) log-probabilities whose argmax is ``pred``, with probability ``p`` on it."""
    pred = maps(*pred)
    pet = torch.where(pred == 1, p, 1 - p).double()
    return torch.stack([1 - pet, pet], dim=1).log()


def test_scores_pool_over_images_and_average_per_image():
    # Image A: the half overlap; image B: both empty.
    pred, target = [OVERLAP[0], [0, 0, 0, 0]], [OVERLAP[1], [0, 0, 0, 0]]
    scores = SegmentationScores()
    scores.update(confident_log_probabilities(pred[:1]), maps(*target[:1]))  # two batches
    scores.update(confident_log_probabilities(pred[1:]), maps(*target[1:]))
    summary = scores.summary()

    assert scores.dice == pytest.approx([0.5, 1.0])
    assert summary["dice"] == pytest.approx(0.75)  # mean per image
    assert summary["pooled_dice"] == pytest.approx(2 * 1 / (2 + 2))  # B adds no pixels to the pool
    assert summary["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["pixel_accuracy"] == pytest.approx((2 + 4) / 8)
    right, wrong = -math.log(0.8), -math.log(0.2)
    assert summary["cross_entropy"] == pytest.approx(((2 * right + 2 * wrong) / 4 + right) / 2)
    assert scores.foreground_fraction == pytest.approx([2 / 4, 0.0])


def test_pooled_dice_of_all_empty_images_is_one():
    scores = SegmentationScores()
    scores.update(confident_log_probabilities([[0, 0, 0, 0]]), maps([0, 0, 0, 0]))
    assert scores.summary()["pooled_dice"] == 1.0 and scores.summary()["dice"] == 1.0


def test_cross_entropy_of_logits_equals_torch_loss():
    logits = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2, (3, 5, 7), generator=torch.Generator().manual_seed(1))
    scores = SegmentationScores()
    scores.update(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target).item()
    assert scores.summary()["cross_entropy"] == pytest.approx(expected, rel=1e-6)
    assert scores.dice == pytest.approx(dice_per_image(logits.argmax(1), target).tolist())
