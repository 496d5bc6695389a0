"""Pixel decoder: four ConvBlocks, each after a bilinear x2 upsample plus skip."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvLayer(nn.Module):
    """conv (with bias) -> BN -> ReLU. `bn` is registered first to match the checkpoint's key order."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvBlock(nn.Module):
    """A chain of ConvLayers going through `widths` (first entry is the input width)."""

    def __init__(self, widths: Sequence[int], kernel: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(*(ConvLayer(i, o, kernel) for i, o in zip(widths[:-1], widths[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


# Widths of the four stages, from the 256-channel conv_map output to full resolution.
DECODER_STAGES = ((256, 256, 128), (128, 128, 64), (64, 64, 64), (64, 64, 64))


class PixelDecoder(nn.ModuleList):
    """Upsamples from 1/16 to full resolution, adding the encoder skips (x3, x2, x1, x0)."""

    def __init__(self) -> None:
        super().__init__(ConvBlock(widths) for widths in DECODER_STAGES)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for block, skip in zip(self, skips):
            up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(up.add_(skip))
        return x
