import re

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from petseg_cli.cli.app import app
from petseg_cli.models.summary import LayerRow, summarize_model
from petseg_cli.models import build_model, count_parameters
from run_files import IMAGE_SIZE, epoch_records, finished_summary, write_run

# The figures: forward GFLOPs (2 x multiply-adds) of one 256 x 256 image.
GFLOPS_AT_256 = {"unet": 96.3, "resnet34-unet": 13.4}

runner = CliRunner()


@pytest.mark.parametrize(("name", "cbam"), [("unet", True), ("resnet34-unet", True), ("resnet34-unet", False)])
def test_parameter_totals_equal_the_counted_parameters(name, cbam):
    model = build_model(name, cbam=cbam)
    summary = summarize_model(model, IMAGE_SIZE, depth=2)
    counted = sum(p.numel() for p in model.parameters())
    assert summary.parameters == summary.trainable == counted
    assert sum(row.parameters for row in summary.rows if row.depth == 1) == counted
    assert summary.weights_mb == pytest.approx(counted * 4 / 1e6)
    assert {row.depth for row in summary.rows} == {1, 2}


@pytest.mark.parametrize(("name", "expected"), list(GFLOPS_AT_256.items()))
def test_gflops_at_256_match_the_reference_figures(name, expected):
    summary = summarize_model(build_model(name), 256, depth=1)
    assert summary.gflops == pytest.approx(expected, rel=0.01)
    assert summary.flops == sum(row.flops for row in summary.rows)  # the top-level rows add up


def test_counting_rules_on_a_model_small_enough_to_count_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1),  # 8x32x32 outputs, 3x3x3 each
        nn.ReLU(inplace=True),  # in place: no new activation
        nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2),  # every 8x32x32 input meets 4x2x2 weights
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # a view of the pooled tensor
        nn.Linear(4, 5),
    )
    summary = summarize_model(model, 32, depth=1)
    assert summary.flops == 2 * (8 * 32 * 32 * 27 + 8 * 32 * 32 * 16 + 5 * 4)
    assert summary.activation_bytes == 4 * (8 * 32 * 32 + 4 * 64 * 64 + 4 + 5)
    assert [row.output_shape for row in summary.rows] == [
        "[1, 8, 32, 32]", "[1, 8, 32, 32]", "[1, 4, 64, 64]", "[1, 4, 1, 1]", "[1, 4]", "[1, 5]",
    ]
    assert [row.flops for row in summary.rows][:3] == [2 * 8 * 32 * 32 * 27, 0, 2 * 8 * 32 * 32 * 16]


def first_layer(summary) -> LayerRow:
    """The first convolution or linear layer the image meets (the models start with one)."""
    return next(row for row in summary.rows if row.kind in ("Conv2d", "Linear"))


@pytest.mark.parametrize("name", ["unet", "resnet34-unet"])
def test_backward_costs_twice_the_forward_less_the_images_gradient(name):
    # Every convolution's backward computes its input's gradient and its weight's gradient, each with the
    # forward's multiply-adds; the first layer's input is the image, which needs no gradient.
    summary = summarize_model(build_model(name), 64, depth=99)
    assert summary.backward_flops == 2 * summary.flops - first_layer(summary).flops
    assert summary.flops > 0 and summary.training_gflops == pytest.approx(3 * summary.gflops, rel=0.02)


def test_frozen_layers_have_no_backward_and_pass_no_gradient_on():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1))
    conv1, conv2, conv3 = (summarize_model(model, 32, depth=1).rows[i].flops for i in (0, 2, 3))
    model[0].requires_grad_(False)  # its output needs no gradient: conv2 computes only its weight's
    assert summarize_model(model, 32, depth=1).backward_flops == conv2 + 2 * conv3
    model.requires_grad_(False)  # nothing to train: no backward pass at all
    frozen = summarize_model(model, 32, depth=1)
    assert frozen.backward_flops == 0 and frozen.flops == conv1 + conv2 + conv3 and frozen.trainable == 0


def test_the_callers_model_is_left_on_its_device_with_its_weights():
    model = build_model("resnet34-unet", cbam=False)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    summarize_model(model, 64, depth=1)
    after = model.state_dict()
    assert all(after[name].device.type == "cpu" and torch.equal(after[name], t) for name, t in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_model_name_prints_modules_and_totals():
    result = runner.invoke(app, ["summary", "resnet34-unet", "--no-cbam", "--image-size", "64", "--depth", "1"])
    assert result.exit_code == 0, result.output
    parameters = count_parameters(build_model("resnet34-unet", cbam=False))
    counted = summarize_model(build_model("resnet34-unet", cbam=False), 64, depth=1)
    for text in ("resnet34-unet (no-cbam) at 64x64", "decoder5", "[1, 2, 64, 64]", f"{parameters:,}", "GFLOPs", "MB"):
        assert text in result.stdout
    assert re.search(rf"\nforward GFLOPs \(1x64x64\) +{counted.gflops:.2f}\b", result.stdout)
    assert re.search(rf"\nforward \+ backward GFLOPs \(1x64x64\) +{counted.training_gflops:.2f}\b", result.stdout)
    assert "CBAM" not in result.stdout and "encoder.layer1" not in result.stdout


@pytest.fixture
def run(tmp_path):
    epochs = epoch_records([0.4, 0.7, 0.6], [0.9, 0.5, 0.4], seconds=3725.0, images_per_s=12.0)
    return write_run(tmp_path, "r34", "resnet34-unet", epochs, finished_summary(epochs, "early_stop"), planned=30)


def test_run_directory_as_target_shows_its_training_and_plots(run):
    result = runner.invoke(app, ["summary", str(run), "--plot"])
    assert result.exit_code == 0, result.output
    for text in ("early_stop", "0.7000", "3:06:15", "3/30", f"at {IMAGE_SIZE}x{IMAGE_SIZE}", "▁█▆"):
        assert text in result.stdout
    assert f"{count_parameters(build_model('resnet34-unet')):,}" in result.stdout
    assert str(run) in result.stdout  # not cut to the 80 columns Rich assumes off a terminal
    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["vit"], 2, "neither a model (unet, resnet34-unet) nor a run directory"),
        (["unet", "--image-size", "100"], 2, "multiple of 32"),
        (["unet", "--depth", "0"], 2, "--depth must be at least 1"),
        (["unet", "--plot"], 2, "give a run directory"),
    ],
)
def test_bad_targets_and_options_are_one_line_errors(args, code, message):
    result = runner.invoke(app, ["summary", *args])
    assert result.exit_code == code and message in result.stderr
    assert "Traceback" not in result.output


def test_broken_run_files_are_one_line_errors(run):
    config = run / "config.toml"
    config.write_text(config.read_text().replace('name = "resnet34-unet"', 'name = "segformer"'))
    result = runner.invoke(app, ["summary", str(run)])
    assert result.exit_code == 1 and "unknown model 'segformer'" in result.stderr and str(config) in result.stderr

    (run / "history.json").write_text("{ not json")
    result = runner.invoke(app, ["summary", str(run)])
    assert result.exit_code == 1 and "history.json is not valid JSON" in result.stderr
    assert "Traceback" not in result.output
