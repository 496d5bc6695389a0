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


# Feature px a stage's output is wrong by at a cut edge: 1 for the bilinear x2 upsample, 1 per 3x3 conv.
STAGE_REACH = 3


def _window(lo: int, hi: int, size: int) -> tuple[int, int]:
    """The half-resolution window whose stage output (upsample, two 3x3 convs) is right on [lo, hi)."""
    return max(0, (lo - STAGE_REACH) // 2), min(size, -(-(hi + STAGE_REACH) // 2))


def decoder_windows(
    shape: tuple[int, int], keep: tuple[tuple[int, int], tuple[int, int]], stages: int,
) -> list[tuple[slice, slice]]:
    """(rows, cols) windows of the decoder's inputs at 1/2**stages .. 1/2 and full resolution, so the
    full-resolution output is computed on `keep` ((y0, y1), (x0, x1)) only, with every value there as
    on the whole image: each stage runs on what the next needs plus STAGE_REACH."""
    per_axis = []
    for (lo, hi), size in zip(keep, shape):
        levels = [(lo, hi)]
        for level in range(1, stages + 1):
            levels.append(_window(*levels[-1], size >> level))
        per_axis.append(levels[::-1])
    return [(slice(*rows), slice(*cols)) for rows, cols in zip(*per_axis)]


class PixelDecoder(nn.ModuleList):
    """Upsamples x2 per stage to full resolution, adding the encoder skips (deepest first: x3, x2, x1, x0).

    A stage takes the width of its skip and ends at the next skip's (the last at `out_channels`), so
    the widths follow the encoder's `out_channels`. With `windows` (`decoder_windows`) each stage runs
    only where the output needs it: on CPU the full-resolution stages cost most, and a tile's context
    needs no decoder output of its own.
    """

    def __init__(self, skip_channels: Sequence[int], out_channels: int = 64) -> None:
        ends = (*skip_channels[1:], out_channels)
        super().__init__(ConvBlock((width, width, end)) for width, end in zip(skip_channels, ends))
        self.out_channels = out_channels

    def forward(
        self, x: torch.Tensor, skips: Sequence[torch.Tensor], windows: Sequence[tuple[slice, slice]] | None = None,
    ) -> torch.Tensor:
        if windows is not None:
            x = x[..., windows[0][0], windows[0][1]]
        for level, (block, skip) in enumerate(zip(self, skips), start=1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if windows is not None:  # x covers twice the last window: the stage runs there, then keeps its window
                (rows, cols), (above, left) = windows[level], windows[level - 1]
                covered = skip[..., 2 * above.start : 2 * above.stop, 2 * left.start : 2 * left.stop]
                x = x.contiguous(memory_format=_layout(skip)) + covered
            else:
                x = x.add_(skip)
            for layer in block.block:  # not block(x): the block's argument would live until its last layer
                x = layer(x)
            if windows is not None:
                x = x[..., rows.start - 2 * above.start : rows.stop - 2 * above.start,
                      cols.start - 2 * left.start : cols.stop - 2 * left.start]
        return x if windows is None else x.contiguous(memory_format=_layout(skips[-1]))


def _layout(tensor: torch.Tensor) -> torch.memory_format:
    """Channels-last or not, as `tensor` is: oneDNN runs a strided view in a slow path."""
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
