"""The contract every model honours, so the pipeline never cares which one runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from cerberus_batch.grid import CELL, CONTEXT, Tile


class Predictor(Protocol):
    """Turns an RGB region (with context) into per-pixel and per-cell probabilities.

    `predict(image)` takes uint8 (H + 2*CONTEXT, W + 2*CONTEXT, 3) RGB, with H and W
    multiples of CELL, and returns float32 arrays keyed by head:

    - ``"<Kind>-INST"``: (2, H, W) probabilities of [inner, contour]
    - ``"<Kind>-TYPE"``: (C, H, W) class probabilities
    - ``"Patch-Class"``: (C, H // CELL, W // CELL) tissue-type probabilities per cell

    `tissue` (bool, H // CELL x W // CELL) marks the cells whose outputs are kept: a model may
    leave the others out of its passes (their outputs are then 0), by a rule that sees only its
    own tiles, so the kept outputs do not depend on where the region was cut.

    `input_needed(tissue)` says which input px the kept outputs depend on (boxes of the input image,
    `grid.Tile`s in input px): the pipeline reads only those from the slide, so a chunk mostly glass
    decodes only the tiles around its tissue; `predict` must give the kept outputs whatever the others hold.
    """

    kind: str  # "cerberus" or "stain"
    heads: tuple[str, ...]  # output keys `predict` returns
    class_names: Mapping[str, Sequence[str]]  # per TYPE head and Patch-Class
    identity: str  # stable hash of what determines the outputs (settings, weights, heads)

    def predict(self, image: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, np.ndarray]: ...

    def input_needed(self, tissue: np.ndarray) -> list[Tile]: ...


@dataclass(frozen=True)
class ModelDescription:
    """What a predictor says of itself (the Predictor fields of the same names), known without building it."""

    kind: str
    heads: tuple[str, ...]
    class_names: Mapping[str, Sequence[str]]
    identity: str


def output_size(image: np.ndarray) -> tuple[int, int]:
    """(H, W) of the output a model predicts for `image` (output plus context), or a ValueError saying why not."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    height, width = image.shape[0] - 2 * CONTEXT, image.shape[1] - 2 * CONTEXT
    if height <= 0 or width <= 0 or height % CELL or width % CELL:
        raise ValueError(f"image shape {image.shape[:2]} minus 2*{CONTEXT} context must be positive multiples of {CELL}")
    return height, width


def numerics(model_kind: str, device_type: str, amp: str | None) -> str:
    """How a model's forward passes compute, e.g. "cpu-fp32", "cuda-fp32", "cuda-bf16".

    Maps computed one way differ slightly from another's, so a run records it. Only Cerberus
    runs on a device (the stain baseline is numpy on the CPU). Runs never use TF32 (the
    predictor switches it off), so plain CUDA passes are fp32.
    """
    if model_kind != "cerberus":
        return "cpu-fp32"
    return f"{device_type}-{amp or 'fp32'}"
