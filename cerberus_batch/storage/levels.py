"""A map's viewer levels as arrays: their shapes, and a block halved by the map's way of making them.

Level k of a map is level k - 1 halved (rounded up) in y and x, until the longer side is at most
`SMALLEST` px. "mean" maps (probabilities) take each 2 × 2 block's mean, rounded half to even as they
were quantised; "mode" maps (classes) the block's most common class, ties to the first in raster order
(what nearest-neighbour sampling would pick). Halving is local to each block, so a chunk whose origin and
size are even at every level halves alone to exactly its part of the slide's level (`chunk_levels`).
"""

from __future__ import annotations

import math

import numpy as np

MEAN, MODE = "mean", "mode"  # a map's multiscale `type`: how its levels are made
SMALLEST = 1000  # px: no level is added below a map whose longer side is this or less
SMALLEST_CHUNK = 128  # px: a chunk task writes no level whose chunks would be smaller (many tiny files)


def level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of a map's levels, level 0 first: each the previous halved (rounded up) in y and x."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > SMALLEST:
        *lead, h, w = shapes[-1]
        shapes.append((*lead, math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def chunk_levels(side: int, levels: int) -> int:
    """How many levels past level 0 a chunk task writes from its own maps, for level-0 chunks of `side` px
    and a map of `levels` levels: while the chunk side halves evenly (its blocks are the level's) and
    stays at least `SMALLEST_CHUNK`; the slide's pyramid task makes the rest from the last of them."""
    written = 0
    while written + 1 < levels and side % 2 == 0 and side // 2 >= SMALLEST_CHUNK:
        side //= 2
        written += 1
    return written


def halve(block: np.ndarray, method: str) -> np.ndarray:
    """A (…, h, w) block at half the resolution, (…, ceil(h/2), ceil(w/2)), by `method` (MEAN or MODE).

    A last odd row or column is its own neighbour: it counts twice, so it alone makes its px."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    even = np.pad(block, pad, mode="edge")
    quads = np.stack([even[..., 0::2, 0::2], even[..., 0::2, 1::2], even[..., 1::2, 0::2], even[..., 1::2, 1::2]])
    if method == MEAN:
        mean = quads.mean(axis=0, dtype=np.float32)  # exact for uint8: sums of four are at most 1020
        return (np.rint(mean) if np.issubdtype(block.dtype, np.integer) else mean).astype(block.dtype)
    if method != MODE:
        raise ValueError(f"unknown way to make levels: {method!r} (expected {MEAN!r} or {MODE!r})")
    votes = (quads[:, None] == quads[None, :]).sum(axis=1, dtype=np.uint8)  # how often each of the four occurs in its block
    return np.take_along_axis(quads, np.argmax(votes, axis=0)[None], axis=0)[0]
