"""Output heads: per-pixel logits and the per-patch tissue classifier."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.model.decoder import ConvBlock
from cerberus_batch.model.encoder import ResNet34Encoder

FEATURE_STRIDE = ResNet34Encoder.output_stride  # input px per layer-4 feature cell
CELL_FEATURES = CELL // FEATURE_STRIDE  # 9


class Classifier(nn.Module):
    """The final 1x1 conv, wrapped so its key is `x.1.conv` as in the checkpoint."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PixelHead(nn.Module):
    """The decoder's channels -> 96 (1x1 ConvBlock) -> `classes` logits, at the decoder's resolution."""

    def __init__(self, classes: int, in_channels: int, hidden: int = 96) -> None:
        super().__init__()
        self.x = nn.Sequential(ConvBlock((in_channels, hidden), kernel=1), Classifier(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.x(x)


class PatchClassifier(nn.Sequential):
    """Tissue type from pooled layer-4 features; 1x1 convs, so it also classifies a grid of pooled cells."""

    conv_bn_pairs = (("conv1", "bn2"),)  # bn1 comes before any conv (pre-activation), so it stays

    def __init__(self, classes: int, in_channels: int, hidden: int = 256) -> None:
        super().__init__(
            OrderedDict(
                bn1=nn.BatchNorm2d(in_channels),
                relu1=nn.ReLU(),
                dropout=nn.Dropout(0.3),
                conv1=nn.Conv2d(in_channels, hidden, 1, bias=True),
                bn2=nn.BatchNorm2d(hidden),
                relu2=nn.ReLU(),
                conv2=nn.Conv2d(hidden, classes, 1, bias=True),
            )
        )


def pool_patch(features: torch.Tensor) -> torch.Tensor:
    """The reference pooling: centre 9x9 crop (only when both dims differ from 9), then global mean.

    On a 448-px patch this covers input px 144..287, 8 px off the 152..295 pixel output (kept on purpose).
    """
    height, width = features.shape[-2:]
    if height != CELL_FEATURES and width != CELL_FEATURES:
        top, left = (height - CELL_FEATURES) // 2, (width - CELL_FEATURES) // 2
        features = features[..., top : top + CELL_FEATURES, left : left + CELL_FEATURES]
    return features.mean(dim=(-2, -1), keepdim=True)


def pool_cells(features: torch.Tensor) -> torch.Tensor:
    """One mean per 144-px output cell of a tile with 152 px context: 9x9 windows from feature cell 9.

    Each window is exactly what `pool_patch` averages on the 448-px patch centred on that cell.
    """
    height, width = (FEATURE_STRIDE * size for size in features.shape[-2:])
    cells_y, cells_x = (height - 2 * CONTEXT) // CELL, (width - 2 * CONTEXT) // CELL
    start = CELL_FEATURES  # the reference's patch crop starts 9 cells in, not 152 / 16 = 9.5
    window = features[..., start : start + CELL_FEATURES * cells_y, start : start + CELL_FEATURES * cells_x]
    return F.avg_pool2d(window, CELL_FEATURES)
