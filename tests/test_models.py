import pytest
import torch

from petseg_cli.models import MODELS, build_model, canonical_name, count_parameters

# The counts the architectures fix (README lists them too).
UNET_PARAMETERS = 31_031_810
RESNET34_UNET_PARAMETERS = 22_939_246
RESNET34_UNET_NO_CBAM_PARAMETERS = 22_937_890


@pytest.mark.parametrize(
    ("name", "cbam", "expected"),
    [
        ("unet", True, UNET_PARAMETERS),
        ("resnet34-unet", True, RESNET34_UNET_PARAMETERS),
        ("resnet34-unet", False, RESNET34_UNET_NO_CBAM_PARAMETERS),
    ],
)
def test_parameter_counts(name, cbam, expected):
    assert count_parameters(build_model(name, cbam=cbam)) == expected


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [256, 320])
def test_output_is_two_class_logits_at_input_size(name, size):
    model = build_model(name).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, 2, size, size)


def test_non_square_input_multiple_of_32():
    with torch.inference_mode():
        assert build_model("resnet34-unet").eval()(torch.randn(2, 3, 64, 96)).shape == (2, 2, 64, 96)


def test_seed_spellings_are_aliases():
    assert canonical_name("Unet") == "unet"
    assert canonical_name("ResNet34_Unet") == "resnet34-unet"
    with pytest.raises(ValueError, match="choose one of: unet, resnet34-unet"):
        canonical_name("segformer")


def test_encoder_keys_follow_torchvision_resnet_names():
    keys = set(build_model("resnet34-unet").encoder.state_dict())
    for key in [
        "conv1.weight", "bn1.running_mean", "layer1.2.conv2.weight", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight", "layer3.5.bn2.bias", "layer4.2.conv1.weight",
    ]:
        assert key in keys
    assert not any(k.startswith("layer1.0.downsample") for k in keys)  # stride 1, same width: no shortcut conv


def test_no_cbam_removes_attention_modules():
    with_cbam = {type(m).__name__ for m in build_model("resnet34-unet", cbam=True).modules()}
    without = {type(m).__name__ for m in build_model("resnet34-unet", cbam=False).modules()}
    assert "CBAM" in with_cbam and "CBAM" not in without
