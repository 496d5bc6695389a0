"""Exact pixel-edge outlines: pixel (r, c) covers [c, c+1] × [r, r+1].

A 4-connected pixel set without holes has one boundary curve that never
touches itself, so its outline is a valid, simple ring enclosing exactly its pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Per pixel side: which neighbour (dy, dx) must be outside, and the side's start and end corner (x, y).
SIDES = (
    ((-1, 0), (0, 0), (1, 0)),  # top, walked left to right
    ((0, 1), (1, 0), (1, 1)),  # right, walked downwards
    ((1, 0), (1, 1), (0, 1)),  # bottom, walked right to left
    ((0, -1), (0, 1), (0, 0)),  # left, walked upwards
)


def outer_ring(part: np.ndarray) -> np.ndarray:
    """(n, 2) corner coordinates (x, y), one per turn, of a 4-connected hole-free pixel set."""
    ring = _trace(part)
    if ring is None:
        raise ValueError("outer_ring: the pixel set has holes, pinches or several parts")
    return ring


def instance_ring(instance: np.ndarray) -> np.ndarray:
    """Outer ring of the instance's first part; most instances are one hole-free part already."""
    ring = _trace(instance)
    return ring if ring is not None else outer_ring(first_part(instance))


def _trace(pixels: np.ndarray) -> np.ndarray | None:
    """Walk the boundary from the first pixel's top side; None unless it is the only boundary curve."""
    h, w = pixels.shape
    padded = np.pad(pixels, 1)
    starts, ends, sides = [], [], []
    for side, ((dy, dx), (sx, sy), (ex, ey)) in enumerate(SIDES):
        r, c = np.nonzero(pixels & ~padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        starts.append((r + sy) * (w + 1) + c + sx)
        ends.append((r + ey) * (w + 1) + c + ex)
        sides.append(np.full(r.size, side))
    start, end, side = np.concatenate(starts), np.concatenate(ends), np.concatenate(sides)
    order = np.argsort(start)
    if np.any(start[order[1:]] == start[order[:-1]]):
        return None  # a corner shared by two diagonal pixels
    successor = order[np.searchsorted(start, end, sorter=order)].tolist()
    walk = [0]  # edge 0 is the first pixel's top side, always on the outer curve
    while (step := successor[walk[-1]]) != 0:
        walk.append(step)
    if len(walk) != start.size:
        return None  # holes or further parts
    walked = np.asarray(walk)
    turns = walked[side[walked] != side[np.r_[walked[-1], walked[:-1]]]]
    corner = start[turns]
    return np.column_stack([corner % (w + 1), corner // (w + 1)]).astype(np.float64)


def first_part(instance: np.ndarray) -> np.ndarray:
    """The 4-connected part holding the instance's first pixel in raster order, holes filled."""
    parts, n = ndimage.label(instance)
    if n > 1:
        instance = parts == parts.flat[np.argmax(instance)]
    return ndimage.binary_fill_holes(instance)


def hole_rings(region: np.ndarray) -> list[np.ndarray]:
    """Outlines of the holes (4-connected background enclosed by `region`)."""
    holes, _ = ndimage.label(ndimage.binary_fill_holes(region) & ~region)
    rings = []
    for index, found in enumerate(ndimage.find_objects(holes), start=1):
        ring = outer_ring(ndimage.binary_fill_holes(holes[found] == index))
        rings.append(ring + (found[1].start, found[0].start))
    return rings
