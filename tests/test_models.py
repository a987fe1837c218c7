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


# -- CBAM as first written (mean/amax, one MLP call per descriptor): checkpoints saved before the pooling
# kernels replaced it must load and compute the same thing.
class ReferenceChannelAttention(torch.nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        mx = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class ReferenceSpatialAttention(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(descriptor))


def reference_resnet34_unet():
    """resnet34-unet with CBAM computed as before (same modules, same parameter names)."""
    from petseg_cli.models.resnet34_unet import CBAM

    model = build_model("resnet34-unet")
    for cbam in [m for m in model.modules() if isinstance(m, CBAM)]:
        cbam[0] = ReferenceChannelAttention(cbam[0].mlp)
        cbam[1] = ReferenceSpatialAttention(cbam[1].conv)
    return model


def test_a_state_dict_from_the_reference_cbam_loads_and_gives_the_same_fp32_output_and_gradients():
    torch.manual_seed(0)
    before = reference_resnet34_unet()
    state = before.state_dict()
    now = build_model("resnet34-unet")
    assert list(now.state_dict()) == list(state)  # the same names, in the same order
    now.load_state_dict(state)  # strict
    x = torch.randn(2, 3, 64, 64)
    outputs, grads = [], []
    for model in (before.train(), now.train()):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append((xi.grad, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-6)  # no ties in fp32 noise
    for g_now, g_before in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_now, g_before, rtol=1e-4, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(now.eval()(x), before.eval()(x), rtol=1e-5, atol=1e-5)


def test_cbam_in_bf16_stays_within_bf16_tolerance_of_the_reference():
    torch.manual_seed(0)
    before = reference_resnet34_unet().eval().to(memory_format=torch.channels_last)
    now = build_model("resnet34-unet").eval().to(memory_format=torch.channels_last)
    now.load_state_dict(before.state_dict())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = now(x).float(), before(x).float()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
