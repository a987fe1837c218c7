"""Multi-scale TTA (issue 37): evaluate --tta-scales averages the softmax at several sizes of the model's."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import invoke_cli
from petseg_cli.base.errors import UsageError
from petseg_cli.run import Measure
from synthetic import photo


def test_scales_are_checked_and_each_side_is_a_multiple_of_the_stride():
    from petseg_cli.predict.multiscale import parse_scales, scaled_side

    assert parse_scales("0.75,1,1.25") == (0.75, 1.0, 1.25) and parse_scales(None) == () and parse_scales("") == ()
    for bad in ("1", "1,1", "0.5,x", "0.1,1", "1,5"):
        with pytest.raises(UsageError):
            parse_scales(bad)
    assert [scaled_side(256, s) for s in (0.75, 1.0, 1.25)] == [192, 256, 320]
    assert [scaled_side(64, s) for s in (0.25, 0.75, 1.25)] == [32, 64, 96]  # 48 rounds up to 64, 80 to 96; never under 32


def test_the_average_is_the_mean_of_each_scales_softmax_resized_back(spread_run):
    """Against an independent resize (torch's bilinear upsampling, half-pixel centres, like PIL's)."""
    from petseg_cli.predict.multiscale import MultiScale
    from petseg_cli.predict.predictor import open_predictor
    from petseg_cli.run import Run

    single = open_predictor(Run.open(spread_run), "best", "cpu", "fp32")
    size = single.image_size
    batch = np.stack([np.asarray(Image.fromarray(photo(90, 70, seed)).resize((size, size))) for seed in range(2)])
    half = np.stack([np.asarray(Image.fromarray(image).resize((size // 2, size // 2), Image.BILINEAR)) for image in batch])
    at_half = torch.nn.functional.interpolate(
        torch.from_numpy(np.exp(single.log_probabilities(half))), size=(size, size), mode="bilinear", align_corners=False
    ).numpy()
    expected = (np.exp(single.log_probabilities(batch)) + at_half) / 2

    both = MultiScale(single, (0.5, 1.0))
    got = np.exp(both.log_probabilities(batch))
    assert got.shape == expected.shape == (2, 2, size, size)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(got - np.exp(single.log_probabilities(batch))).max() > 0.01  # the half scale changed something


def test_evaluate_with_scales_has_its_own_file_and_keeps_no_threshold_for_infer(spread_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(spread_run, run)
    for earlier in [*run.glob("eval-*"), *run.glob("threshold.json")]:  # what other tests of this worker wrote
        earlier.unlink()
    result = invoke_cli("evaluate", str(run), "--split", "val", "--tta", "--tta-scales", "0.5,1", "--thresholds", "0.2,0.8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(Measure("val", tta=True, scales=(0.5, 1.0)).file(run, "json").read_text())
    assert record["settings"]["tta_scales"] == [0.5, 1.0] and record["settings"]["tta"] is True
    assert "TTA: horizontal flip and scales 0.5, 1" in " ".join(result.stdout.split())
    assert not (run / "threshold.json").exists() and "kept for infer" not in result.stderr
    assert not Measure("val", tta=True).file(run, "json").exists()  # the flip-only figure is another file

    bad = invoke_cli("evaluate", str(run), "--tta-scales", "1", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "two or more" in bad.stderr
