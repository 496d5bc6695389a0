"""Chunk inference: a region of a slide in, the stored forms of its maps out."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from cerberus_batch.grid import CELL, CONTEXT, ChunkBox, chunk_tissue
from cerberus_batch.model.predictor import Predictor
from cerberus_batch.quantisation import CLASS_DTYPE, quantise
from cerberus_batch.vocabulary import HEAD_MAPS, StoredMap


def read_chunk(read, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The RGB input a model needs for the output box (x, y, w, h): the box plus its context."""
    return read(x - CONTEXT, y - CONTEXT, w + 2 * CONTEXT, h + 2 * CONTEXT)


def pool2(prob: np.ndarray) -> np.ndarray:
    """2x2 mean of (C, H, W) probabilities; H and W are even because chunks start on the 144 grid."""
    c, h, w = prob.shape
    return prob.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4), dtype=np.float32)


def stored_maps(
    outputs: Mapping[str, np.ndarray],
    specs: list[StoredMap],
    empty_cells: Iterable[tuple[int, int]],
    inside: tuple[int, int],
    dtype: str = "uint8",
) -> dict[str, np.ndarray]:
    """Model probabilities of one chunk → the arrays written to Zarr.

    Pixels past `inside` (h, w: the part of the chunk on the slide; the last cells
    overhang it) are background — every probability 0 — before anything else, so no
    object can reach past the slide and a half-resolution pixel on its edge averages
    its outside half as background. Glands and lumens are then pooled to half
    resolution, and the gland class is the argmax of the pooled class probabilities
    (the reference averaged class labels instead, spec §11.7). Cells without tissue
    are zeroed, as the reference never infers them.
    """
    wanted = {spec.name: spec for spec in specs}
    stored: dict[str, np.ndarray] = {}
    for head, maps in HEAD_MAPS.items():
        if head not in outputs:
            continue
        for head_map in maps:
            spec = wanted.get(head_map.name)
            if spec is None:
                continue
            prob = outputs[head]
            if spec.downsample < CELL:  # per-cell maps (tissue type) keep the cells the slide only partly covers
                prob = _background_past(prob, inside)
            if spec.downsample == 2:
                prob = pool2(prob)
            stored[spec.name] = quantise(prob, dtype) if spec.probability else np.argmax(prob, axis=0).astype(CLASS_DTYPE)
    for row, col in empty_cells:
        for spec in specs:
            side = CELL // spec.downsample
            stored[spec.name][..., row * side : (row + 1) * side, col * side : (col + 1) * side] = 0
    return stored


def _background_past(prob: np.ndarray, inside: tuple[int, int]) -> np.ndarray:
    """(C, H, W) probabilities with every pixel at or past row h or column w set to 0."""
    h, w = inside
    if prob.shape[-2:] == (h, w):
        return prob
    kept = np.zeros_like(prob)
    kept[..., :h, :w] = prob[..., :h, :w]
    return kept


def predict_chunk(
    read, predictor: Predictor, box: ChunkBox, empty_cells: Iterable[tuple[int, int]] = (),
) -> dict[str, np.ndarray]:
    """Run the model on one chunk's output box; `empty_cells` (row, col in the chunk) hold no tissue,
    so a model may skip them."""
    x, y, w, h = box
    return predictor.predict(read_chunk(read, x, y, w, h), chunk_tissue(h // CELL, w // CELL, empty_cells))
