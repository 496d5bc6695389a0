"""Exact pixel-edge outlines: pixel (r, c) covers [c, c+1] × [r, r+1].

A 4-connected pixel set without holes has one boundary curve that never
touches itself, so its outline is a valid, simple ring enclosing exactly its pixels.
The tracer is compiled: the nuclei records (`nuclei_record`) trace their outlines with it too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cerberus_batch.tasks.compiled import NX, NY, jit, spread

# Directions of travel along pixel edges (x right, y down).
DX = np.array([1, 0, -1, 0])  # east, south, west, north
DY = np.array([0, 1, 0, -1])


def outer_ring(part: np.ndarray) -> np.ndarray:
    """(n, 2) corner coordinates (x, y), one per turn, of a 4-connected hole-free pixel set."""
    ring = _ring(part)
    if ring is None:
        raise ValueError("outer_ring: the pixel set has holes, pinches or several parts")
    return ring


def instance_ring(instance: np.ndarray) -> np.ndarray:
    """Outer ring of the instance's first part; most instances are one hole-free part already."""
    ring = _ring(instance)
    return ring if ring is not None else outer_ring(first_part(instance))


def _ring(pixels: np.ndarray) -> np.ndarray | None:
    """The boundary from the first pixel's top side; None unless it is the only boundary curve."""
    pixels = np.ascontiguousarray(pixels, dtype=bool)
    fy, fx = divmod(int(np.argmax(pixels)), pixels.shape[1])
    edges = exposed_edges(pixels, True)
    corners = np.empty((edges + 1, 2), np.float64)  # at most one corner per edge
    end = trace(pixels, True, fy, fx, edges, corners, 0)
    return None if end < 0 else corners[:end].copy()


def first_part(instance: np.ndarray) -> np.ndarray:
    """The 4-connected part holding the instance's first pixel in raster order, holes filled."""
    instance = np.ascontiguousarray(instance, dtype=bool)
    part = np.zeros(instance.shape, bool)
    fy, fx = divmod(int(np.argmax(instance)), instance.shape[1])
    fill_first_part(instance, True, fy, fx, part)
    return part


def hole_rings(region: np.ndarray) -> list[np.ndarray]:
    """Outlines of the holes (4-connected background enclosed by `region`)."""
    holes, _ = ndimage.label(ndimage.binary_fill_holes(region) & ~region)
    rings = []
    for index, found in enumerate(ndimage.find_objects(holes), start=1):
        ring = outer_ring(ndimage.binary_fill_holes(holes[found] == index))
        rings.append(ring + (found[1].start, found[0].start))
    return rings


# ----------------------------------------------------------------------------------------- compiled


@jit
def _out_direction(img, value, cx, cy):
    """The one boundary edge leaving corner (cx, cy) of the pixel set img == value; -1 at a pinch."""
    hh, ww = img.shape
    a = cy >= 1 and cx >= 1 and img[cy - 1, cx - 1] == value
    b = cy >= 1 and cx < ww and img[cy - 1, cx] == value
    c = cy < hh and cx >= 1 and img[cy, cx - 1] == value
    d = cy < hh and cx < ww and img[cy, cx] == value
    found, direction = 0, -1
    if d and not b:
        found, direction = found + 1, 0
    if c and not d:
        found, direction = found + 1, 1
    if a and not c:
        found, direction = found + 1, 2
    if b and not a:
        found, direction = found + 1, 3
    return direction if found == 1 else -1


@jit
def trace(img, value, fy, fx, edges, corners, at):
    """Turn corners of the boundary of img == value, clockwise from the top-left corner of its first
    pixel (fy, fx), written to corners[at:]. Returns the new end, or -1 unless that boundary (of
    `edges` pixel edges in all) is the set's only one."""
    cx, cy, direction = fx, fy, 0
    corners[at] = (cx, cy)
    end = at + 1
    steps = 0
    while True:
        cx, cy = cx + DX[direction], cy + DY[direction]
        steps += 1
        turn = _out_direction(img, value, cx, cy)
        if turn < 0:
            return -1
        if cx == fx and cy == fy:
            break
        if turn != direction:
            corners[end] = (cx, cy)
            end += 1
        direction = turn
    return end if steps == edges else -1


@jit
def exposed_edges(img, value):
    """How many pixel edges of img == value face a pixel outside it (or the array's edge)."""
    hh, ww = img.shape
    total = 0
    for y in range(hh):
        for x in range(ww):
            if img[y, x] != value:
                continue
            for k in range(4):
                qy, qx = y + NY[k], x + NX[k]
                if not (0 <= qy < hh and 0 <= qx < ww and img[qy, qx] == value):
                    total += 1
    return total


@jit
def fill_first_part(img, value, fy, fx, part):
    """part = the 4-connected part of img == value holding (fy, fx), holes filled: every pixel not
    4-connected to the array's edge through pixels outside the part."""
    hh, ww = img.shape
    pw = ww + 2  # a frame of one px, never spread over
    of_value = np.zeros((hh + 2) * pw, np.bool_)
    for y in range(hh):
        for x in range(ww):
            of_value[(y + 1) * pw + x + 1] = img[y, x] == value
    queue = np.empty((hh + 2) * pw, np.int32)
    in_part = np.zeros((hh + 2) * pw, np.int32)
    queue[0] = (fy + 1) * pw + fx + 1
    in_part[queue[0]] = 1
    spread(of_value, in_part, pw, queue, 1, 1)
    around = np.zeros((hh + 2) * pw, np.bool_)  # pixels outside the part
    outside = np.zeros((hh + 2) * pw, np.int32)  # those reached from the array's edge
    tail = 0
    for y in range(hh):
        for x in range(ww):
            p = (y + 1) * pw + x + 1
            around[p] = not in_part[p]
            if around[p] and (y == 0 or x == 0 or y == hh - 1 or x == ww - 1):
                outside[p] = 1
                queue[tail] = p
                tail += 1
    spread(around, outside, pw, queue, tail, 1)
    for y in range(hh):
        for x in range(ww):
            part[y, x] = not outside[(y + 1) * pw + x + 1]
