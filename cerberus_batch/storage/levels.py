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
from numba import njit

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
    if method not in (MEAN, MODE):
        raise ValueError(f"unknown way to make levels: {method!r} (expected {MEAN!r} or {MODE!r})")
    if block.dtype == np.uint8:  # every class map and the default probabilities: compiled, one pass
        planes = block.reshape((-1, *block.shape[-2:]))
        halved = _halve_mean_uint8(planes) if method == MEAN else _halve_mode_uint8(planes)
        return halved.reshape((*block.shape[:-2], *halved.shape[-2:]))
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    even = np.pad(block, pad, mode="edge")
    quads = np.stack([even[..., 0::2, 0::2], even[..., 0::2, 1::2], even[..., 1::2, 0::2], even[..., 1::2, 1::2]])
    if method == MEAN:
        mean = quads.mean(axis=0, dtype=np.float32)  # exact for small integers: sums of four
        return (np.rint(mean) if np.issubdtype(block.dtype, np.integer) else mean).astype(block.dtype)
    votes = (quads[:, None] == quads[None, :]).sum(axis=1, dtype=np.uint8)  # how often each of the four occurs in its block
    return np.take_along_axis(quads, np.argmax(votes, axis=0)[None], axis=0)[0]


@njit(cache=True)
def _halve_mean_uint8(planes: np.ndarray) -> np.ndarray:
    """Each 2 × 2 block's mean, rounded half to even (as the quantisation rounds), per (n, h, w) plane."""
    n, h, w = planes.shape
    out = np.empty((n, (h + 1) // 2, (w + 1) // 2), np.uint8)
    for c in range(n):
        for y in range(out.shape[1]):
            y0, y1 = 2 * y, min(2 * y + 1, h - 1)
            for x in range(out.shape[2]):
                x0, x1 = 2 * x, min(2 * x + 1, w - 1)
                total = np.int32(planes[c, y0, x0]) + planes[c, y0, x1] + planes[c, y1, x0] + planes[c, y1, x1]
                quarter, rest = total >> 2, total & 3
                out[c, y, x] = quarter + (rest > 2 or (rest == 2 and quarter & 1))
    return out


@njit(cache=True)
def _halve_mode_uint8(planes: np.ndarray) -> np.ndarray:
    """Each 2 × 2 block's most common value, ties to the first in raster order, per (n, h, w) plane."""
    n, h, w = planes.shape
    out = np.empty((n, (h + 1) // 2, (w + 1) // 2), np.uint8)
    quad = np.empty(4, np.uint8)
    for c in range(n):
        for y in range(out.shape[1]):
            y0, y1 = 2 * y, min(2 * y + 1, h - 1)
            for x in range(out.shape[2]):
                x0, x1 = 2 * x, min(2 * x + 1, w - 1)
                quad[0], quad[1], quad[2], quad[3] = planes[c, y0, x0], planes[c, y0, x1], planes[c, y1, x0], planes[c, y1, x1]
                best, most = quad[0], 0
                for i in range(4):
                    votes = (quad[i] == quad[0]) + (quad[i] == quad[1]) + (quad[i] == quad[2]) + (quad[i] == quad[3])
                    if votes > most:
                        best, most = quad[i], votes
                out[c, y, x] = best
    return out
