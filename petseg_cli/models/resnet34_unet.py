"""ResNet34 encoder + U-Net decoder with CBAM attention.

The encoder's modules are named as torchvision's ResNet names them (``conv1``, ``bn1``, ``layer1`` ..
``layer4``, ``downsample``), so ImageNet weights load into ``model.encoder`` without key surgery.
The decoder works at a fixed width of 32 channels: a bridge, a ``center`` block, then five 2x
up-sampling steps, the first three concatenating the stage-3, stage-2 and stage-1 features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_WIDTH = 32


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (torchvision's BasicBlock)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet34 without its classifier; returns the outputs of the four stages."""

    def __init__(self, in_channels: int = 3, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(64, 64, layers[0], stride=1)
        self.layer2 = self._make_stage(64, 128, layers[1], stride=2)
        self.layer3 = self._make_stage(128, 256, layers[2], stride=2)
        self.layer4 = self._make_stage(256, 512, layers[3], stride=2)

    @staticmethod
    def _make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [BasicBlock(inplanes, planes, stride)]
        stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        e1 = self.layer1(x)  # 1/4, 64 channels
        e2 = self.layer2(e1)  # 1/8, 128
        e3 = self.layer3(e2)  # 1/16, 256
        e4 = self.layer4(e3)  # 1/32, 512
        return [e1, e2, e3, e4]


class ChannelAttention(nn.Module):
    """Weights channels by a shared MLP over average- and max-pooled descriptors.

    The pooling uses torch's pooling kernels (accumulation in fp32 without converting the input, a
    backward that writes the gradient to the maximum's index): the same arithmetic as ``mean``/``amax``
    in fewer passes over the feature map (at full resolution these passes cost more than the attention's
    convolutions). The MLP runs on each descriptor separately: stacking them along the batch would tie
    an exported model to the batch size it was traced with.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """Weights positions by a 7x7 conv over the channel mean and max (``max`` rather than ``amax``: the
    same values, and a backward that selects by index instead of comparing the whole map)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], dim=1)
        return x * torch.sigmoid(self.conv(descriptor))


class CBAM(nn.Sequential):
    """Convolutional Block Attention Module: channel attention, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention())


class DecoderBlock(nn.Sequential):
    """2 x (3x3 conv without bias, BN, ReLU), then CBAM unless disabled."""

    def __init__(self, in_channels: int, out_channels: int = DECODER_WIDTH, cbam: bool = True) -> None:
        layers: list[nn.Module] = [
            conv3x3(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if cbam:
            layers.append(CBAM(out_channels))
        super().__init__(*layers)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        )


def upsample() -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(DECODER_WIDTH, DECODER_WIDTH, kernel_size=2, stride=2)


class ResNet34UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, cbam: bool = True) -> None:
        super().__init__()
        w = DECODER_WIDTH
        self.encoder = ResNet34Encoder(in_channels)
        self.bridge = ConvBNReLU(512, 256)
        self.center = DecoderBlock(256 + 512, w, cbam)
        self.up1, self.decoder1 = upsample(), DecoderBlock(w + 256, w, cbam)
        self.up2, self.decoder2 = upsample(), DecoderBlock(w + 128, w, cbam)
        self.up3, self.decoder3 = upsample(), DecoderBlock(w + 64, w, cbam)
        self.up4, self.decoder4 = upsample(), DecoderBlock(w, w, cbam)
        self.up5, self.decoder5 = upsample(), DecoderBlock(w, w, cbam)
        self.head = nn.Conv2d(w, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1, e2, e3, e4 = self.encoder(x)
        x = self.center(torch.cat([self.bridge(e4), e4], dim=1))  # 1/32
        x = self.decoder1(torch.cat([self.up1(x), e3], dim=1))  # 1/16
        x = self.decoder2(torch.cat([self.up2(x), e2], dim=1))  # 1/8
        x = self.decoder3(torch.cat([self.up3(x), e1], dim=1))  # 1/4
        x = self.decoder4(self.up4(x))  # 1/2
        x = self.decoder5(self.up5(x))  # 1/1
        return self.head(x)
