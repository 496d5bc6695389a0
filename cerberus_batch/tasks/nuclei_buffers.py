"""The named buffers the compiled nuclei phases share (`nuclei_phases`, `nuclei_flood`, `nuclei_record`).

Scratch is sized once per window for its largest support and reused by each: most supports are small,
and allocating a dozen arrays per support would cost more than the work on it. Box-sized buffers are
flat, rows of the support's box width: a phase reads them flat (neighbours by offsets) or as `grid`s.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from cerberus_batch.tasks.compiled import phase

# The window, as `nuclei.measure_nuclei` passes it: support labels and the supports' boxes and pixels
# (see `nuclei.Supports`), the inner map's codes and their table, the class map (or (1, 1): none),
# which sides are the map's edge, and the label image to write (or (1, 1): none).
Window = namedtuple("Window", "support boxes rows cols starts inner table classes edges labels")
# One support in its buffer: label, the buffer's origin in the window and shape (the support's box
# plus a 1-px frame), and its pixels in buffer coordinates, raster order.
Box = namedtuple("Box", "label oy ox hh ww ly lx")
Scratch = namedtuple("Scratch", [
    "eroded", "seeds", "body", "enclosable", "open_to_border", "clean",  # bool, box-sized (the last two per hole)
    "body_parts", "holes", "markers", "flooded", "levels", "links", "queue", "heights",  # box-sized
    "ly", "lx", "part_sizes", "ages", "order", "by_level", "items", "row_of", "values", "nucleus_boxes",  # per px
    "spans", "heads", "tails", "level_starts", "level_fill",  # per box side, per uint8 level (starts: 257)
])
# The nuclei found so far, one row each (corners: their outlines' turns, rows split by ring_starts);
# `exposed` is each nucleus's count of boundary edges.
Records = namedtuple("Records", "first area sum_x sum_y counts kept exposed corners ring_starts")


@phase
def grid(flat, box):
    """A box-sized buffer as the support's (hh, ww) buffer."""
    return flat[: box.hh * box.ww].reshape((box.hh, box.ww))


@phase
def new_scratch(win, chosen):
    most_px, most_box, most_sides = 1, 1, 1
    boxes, starts = win.boxes, win.starts
    for s in chosen:
        hh, ww = boxes[s, 2] - boxes[s, 0] + 2, boxes[s, 3] - boxes[s, 1] + 2
        most_px = max(most_px, starts[s + 1] - starts[s] + 1)
        most_box, most_sides = max(most_box, hh * ww + 1), max(most_sides, 2 * (hh + ww))
    if most_box >= 2**31:
        raise ValueError("nuclei: a support's box holds 2**31 px or more")
    return Scratch(
        np.empty(most_box, np.bool_), np.empty(most_box, np.bool_), np.empty(most_box, np.bool_),
        np.empty(most_box, np.bool_), np.empty(most_box, np.bool_), np.empty(most_box, np.bool_),
        np.empty(most_box, np.int32), np.empty(most_box, np.int32), np.empty(most_box, np.int32),
        np.empty(most_box, np.int32), np.empty(most_box, np.int32), np.empty(most_box, np.int32),
        np.empty(most_box, np.int32), np.empty(most_box, np.float32),
        np.empty(most_px, np.int64), np.empty(most_px, np.int64), np.empty(most_px, np.int64),
        np.empty(most_px, np.int64), np.empty(most_px, np.int64), np.empty(most_px, np.int64),
        np.empty(most_px, np.int64), np.empty(most_px, np.int64), np.empty(most_px, np.float64),
        np.empty((most_px, 4), np.int64), np.empty(most_sides, np.int64),
        np.empty(256, np.int64), np.empty(256, np.int64), np.empty(257, np.int64), np.empty(256, np.int64),
    )


@phase
def new_records(total, marker_min_area, n_classes):
    """Room for the nuclei of `total` support px: each holds a marker of at least marker_min_area px."""
    cap = total // marker_min_area + 1
    return Records(
        np.empty(cap, np.int64), np.zeros(cap, np.int64), np.zeros(cap, np.int64), np.zeros(cap, np.int64),
        np.zeros((cap, n_classes), np.int64), np.zeros(cap, np.bool_), np.zeros(cap, np.int64),
        np.empty((4 * total + 1, 2), np.float64),  # at most one corner per boundary edge
        np.zeros(cap + 1, np.int64),
    )


@phase
def support_box(win, scratch, s):
    """Support s in its buffer; its pixels are written to scratch.ly / lx."""
    oy, ox = win.boxes[s, 0] - 1, win.boxes[s, 1] - 1
    hh, ww = win.boxes[s, 2] - win.boxes[s, 0] + 2, win.boxes[s, 3] - win.boxes[s, 1] + 2
    start, count = win.starts[s], win.starts[s + 1] - win.starts[s]
    ly, lx, rows, cols = scratch.ly[:count], scratch.lx[:count], win.rows, win.cols
    for i in range(count):
        ly[i], lx[i] = rows[start + i] - oy, cols[start + i] - ox
    return Box(s + 1, oy, ox, hh, ww, ly, lx)
