"""Chunk inference: a region of a slide in, the stored forms of its maps out."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Mapping

import numpy as np

from cerberus_batch.grid import CELL, CONTEXT, ChunkBox, Tile, chunk_tissue
from cerberus_batch.model.predictor import Predictor
from cerberus_batch.quantisation import CLASS_DTYPE, quantise, quantised
from cerberus_batch.tasks.compiled import jit, phase
from cerberus_batch.vocabulary import HEAD_MAPS, StoredMap


def read_chunk(read, x: int, y: int, w: int, h: int, needed: Iterable[Tile] | None = None) -> np.ndarray:
    """The RGB input a model needs for the output box (x, y, w, h): the box plus its context, read from the
    slide where `needed` (boxes in input px; None: all of it) says, and white elsewhere."""
    whole = Tile(0, 0, h + 2 * CONTEXT, w + 2 * CONTEXT)
    needed = [whole] if needed is None else list(needed)
    if _covered(needed, whole):  # one read, not many overlapping ones
        return read(x - CONTEXT, y - CONTEXT, whole.w, whole.h)
    image = np.full((whole.h, whole.w, 3), 255, np.uint8)
    for top, left, height, width in needed:
        image[top : top + height, left : left + width] = read(x - CONTEXT + left, y - CONTEXT + top, width, height)
    return image


def _covered(boxes: list[Tile], whole: Tile) -> bool:
    """Whether `boxes` cover all of `whole`."""
    covered = np.zeros((whole.h, whole.w), bool)
    for top, left, height, width in boxes:
        covered[top : top + height, left : left + width] = True
    return bool(covered.all())


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
            stored[spec.name] = _stored(prob, spec, dtype)
    for row, col in empty_cells:
        for spec in specs:
            side = CELL // spec.downsample
            stored[spec.name][..., row * side : (row + 1) * side, col * side : (col + 1) * side] = 0
    return stored


def _stored(prob: np.ndarray, spec: StoredMap, dtype: str) -> np.ndarray:
    """One map's stored form, pooled first when it is kept at half resolution; compiled single passes
    where it is uint8 (class maps always), equal to numpy's pool2, quantise and argmax."""
    step = 2 if spec.downsample == 2 else 1
    if spec.probability and (dtype != "uint8" or step == 1):
        return quantise(pool2(prob) if step == 2 else prob, dtype)
    if step == 2:
        prob = prob.astype(np.float32, copy=False)  # pool2 sums in float32 whatever it is given
    if spec.probability:
        return _quantise_pooled(prob)
    return _classes(prob, step, np.empty((prob.shape[1] // step, prob.shape[2] // step), CLASS_DTYPE))


@phase
def _at(prob, c, y, x, step):
    """Channel c at map px (y, x): a px of `prob` (step 1), or pool2's mean of its 2 x 2 block, summed in
    numpy's order (step 2) so the float32 mean is bit for bit pool2's."""
    if step == 1:
        return prob[c, y, x]
    y, x = 2 * y, 2 * x
    return ((prob[c, y, x] + prob[c, y, x + 1]) + (prob[c, y + 1, x] + prob[c, y + 1, x + 1])) / np.float32(4)


@jit
def _quantise_pooled(prob: np.ndarray) -> np.ndarray:
    """quantise(pool2(prob)) without pool2's float32 temporary."""
    channels, h, w = prob.shape
    out = np.empty((channels, h // 2, w // 2), np.uint8)
    for c in range(channels):
        for y in range(h // 2):
            for x in range(w // 2):
                out[c, y, x] = quantised(_at(prob, c, y, x, 2))
    return out


@jit
def _classes(prob: np.ndarray, step: int, out: np.ndarray) -> np.ndarray:
    """argmax over channels into `out` (the first of equal maxima; a NaN wins, as numpy's), pooled first
    at step 2, without numpy's transposed copy and int64 indices; a row at a time, channel by channel,
    so each channel is read in order."""
    best = np.empty(out.shape[1], prob.dtype)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            best[x], out[y, x] = _at(prob, 0, y, x, step), 0
        for c in range(1, prob.shape[0]):
            for x in range(out.shape[1]):
                value = _at(prob, c, y, x, step)
                if value > best[x] or (np.isnan(value) and not np.isnan(best[x])):
                    best[x], out[y, x] = value, c
    return out


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
    forward: Callable[[], ContextManager[Any]] = nullcontext,
) -> dict[str, np.ndarray]:
    """Run the model on one chunk's output box; `empty_cells` (row, col in the chunk) hold no tissue,
    so a model may skip them. The model's pass runs within `forward()` (a worker's memory setting)."""
    x, y, w, h = box
    tissue = chunk_tissue(h // CELL, w // CELL, empty_cells)
    image = read_chunk(read, x, y, w, h, predictor.input_needed(tissue))
    with forward():
        return predictor.predict(image, tissue)
