"""The Cerberus network: shared ResNet-34 encoder, one pixel decoder per task, tissue-type classifier."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from cerberus_batch.grid import CONTEXT
from cerberus_batch.model.decoder import PixelDecoder, decoder_windows
from cerberus_batch.model.encoder import ResNet34Encoder
from cerberus_batch.model.heads import PatchClassifier, PixelHead, pool_cells, pool_patch
from cerberus_batch.model.naming import (
    PATCH_CLASS, RELEASED_TASKS, considered_decoders, output_classes, output_key, resolve_decoders,
)


class CerberusNet(nn.Module):
    """Built from `decoder_kwargs` ({decoder: {head: classes}}), keeping only `considered_tasks`.

    Module names match the released checkpoint (`backbone`, `conv_map`, `decoder_head`, `output_head`).
    """

    def __init__(
        self, decoder_kwargs: Mapping[str, Mapping[str, int]], considered_tasks: Sequence[str] = RELEASED_TASKS
    ) -> None:
        super().__init__()
        self.decoder_kwargs = considered_decoders(decoder_kwargs, considered_tasks)
        self.backbone = ResNet34Encoder()
        widths = self.backbone.out_channels
        skips = widths[-2::-1]  # x3 .. x0, as the decoders add them
        self.conv_map = nn.Conv2d(widths[-1], skips[0], 1, bias=False)  # x4 to the first skip's width
        self.decoder_head = nn.ModuleDict()
        for decoder, heads in self.decoder_kwargs.items():
            if decoder == PATCH_CLASS:
                self.decoder_head[decoder] = PatchClassifier(next(iter(heads.values())), widths[-1])
            else:
                self.decoder_head[decoder] = PixelDecoder(skips)
        self.output_head = nn.ModuleDict(
            {
                decoder: nn.ModuleDict(
                    {head: PixelHead(classes, self.decoder_head[decoder].out_channels) for head, classes in heads.items()}
                )
                for decoder, heads in self.decoder_kwargs.items()
                if decoder != PATCH_CLASS
            }
        )
        self.running = tuple(self.decoder_kwargs)

    def run_only(self, heads: Iterable[str] | None) -> CerberusNet:
        """Restrict forward to the decoders behind `heads` (see `resolve_decoders`); None runs all."""
        self.running = resolve_decoders(heads, self.decoder_kwargs)
        return self

    @property
    def output_classes(self) -> dict[str, int]:
        """Logit channels of each running output key, in forward order."""
        return output_classes(self.decoder_kwargs, self.running)

    def forward(self, images: torch.Tensor, per_cell: bool = False) -> dict[str, torch.Tensor]:
        """Raw logits of the running heads for float NCHW RGB in 0..255 (H, W divisible by 16).

        Pixel heads are N x C x H x W. Patch-Class is N x 9 x 1 x 1 (the reference crop), or with
        `per_cell` one column per 144-px output cell of a tile with 152 px context.
        """
        return dict(self._heads(images, per_cell, margin=0))

    def tile_logits(self, images: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """(output key, logits) of a tile with CONTEXT px on every side, one head at a time.

        The pixel decoders and heads run on the output only, plus what their convolutions reach
        (`decoder_windows`): the same values as on the whole tile, for ~60% of the decoder work. Each
        head's logits are yielded before the next decoder runs, so the caller can store and drop
        them. Patch-Class has one column per 144-px output cell.
        """
        return self._heads(images, per_cell=True, margin=CONTEXT)

    def _heads(self, images: torch.Tensor, per_cell: bool, margin: int) -> Iterator[tuple[str, torch.Tensor]]:
        x0, x1, x2, x3, x4 = self.backbone(images / 255.0)
        start = self.conv_map(x4) if any(d != PATCH_CLASS for d in self.running) else None
        height, width = images.shape[-2:]
        keep = ((margin, height - margin), (margin, width - margin))
        stages = len(self.backbone.out_channels) - 1
        windows = decoder_windows((height, width), keep, stages) if margin else None  # pixel heads see the output only
        for decoder in self.running:
            if decoder == PATCH_CLASS:
                pooled = pool_cells(x4) if per_cell else pool_patch(x4)
                yield PATCH_CLASS, self.decoder_head[decoder](pooled)
                continue
            features = self.decoder_head[decoder](start, (x3, x2, x1, x0), windows)
            for head, module in self.output_head[decoder].items():
                yield output_key(decoder, head), module(features)
            del features  # one decoder's full-resolution features at a time

