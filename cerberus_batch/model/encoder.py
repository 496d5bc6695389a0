"""ResNet-34 encoder with a stride-1 stem, returning the five skip feature maps."""

from __future__ import annotations

import math

import torch
from torch import nn

STEM_WIDTH = 64
LAYER_BLOCKS = (3, 4, 6, 3)
LAYER_WIDTHS = (64, 128, 256, 512)
LAYER_STRIDES = (1, 2, 2, 2)  # layer1 follows the stride-2 max-pool


class Downsample(nn.Sequential):
    """The 1x1 strided projection of a shortcut, then BN."""

    conv_bn_pairs = (("0", "1"),)

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projected) shortcut."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = Downsample(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _layer(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    first = BasicBlock(in_channels, channels, stride)
    return nn.Sequential(first, *(BasicBlock(channels, channels, 1) for _ in range(blocks - 1)))


class ResNet34Encoder(nn.Module):
    """torchvision's ResNet-34 layout, but the stem conv has stride 1 as in Cerberus.

    `avgpool` and `fc` are kept only because the released checkpoint holds their
    weights (strict loading); forward never uses them. Decoders and heads read the widths of
    the five features from `out_channels` and their input px per deepest cell from `output_stride`.
    """

    conv_bn_pairs = (("conv1", "bn1"),)
    out_channels = (STEM_WIDTH, *LAYER_WIDTHS)  # x0 .. x4
    output_stride = 2 * math.prod(LAYER_STRIDES)  # the max-pool, then the layers: 16

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 7, 1, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = STEM_WIDTH
        for index, (blocks, width, stride) in enumerate(zip(LAYER_BLOCKS, LAYER_WIDTHS, LAYER_STRIDES), start=1):
            self.add_module(f"layer{index}", _layer(in_channels, width, blocks, stride))
            in_channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, 1000)  # ImageNet's classes, unused

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x0 (full resolution, before the max-pool) .. x4 (1/16)."""
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]
