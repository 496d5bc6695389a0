"""The compiled records of one support's nuclei (rules in `nuclei`), and the pass over the chosen supports
that runs every phase: erosion, markers, holes, flood, record."""

from __future__ import annotations

import numpy as np

from cerberus_batch.tasks.compiled import NX, NY, jit, phase
from cerberus_batch.tasks.nuclei_buffers import grid, new_records, new_scratch, support_box
from cerberus_batch.tasks.nuclei_flood import flood
from cerberus_batch.tasks.nuclei_phases import erode, fill_holes, find_markers, keep_body
from cerberus_batch.tasks.outline import exposed_edges, fill_first_part, trace


@jit
def measure(win, chosen, n_classes, min_area, marker_min_area):
    """The nuclei of the `chosen` supports, in the order of their first pixels, as trimmed Records."""
    total = 0
    starts = win.starts
    for s in chosen:
        total += starts[s + 1] - starts[s]
    records = new_records(total, marker_min_area, n_classes)
    scratch = new_scratch(win, chosen)
    n, end = 0, 0
    for s in chosen:
        box = support_box(win, scratch, s)
        erode(win, box, scratch)
        keep_body(scratch, box, min_area)
        find_markers(win, box, scratch, marker_min_area)
        fill_holes(win, scratch, box)
        if flood(win, scratch, box):
            base = n
            n = _tally(win, scratch, box, records, n)
            end = _outline(win, scratch, box, records, base, n, end)
    records.ring_starts[n] = end
    return (records.first[:n].copy(), records.area[:n].copy(), records.sum_x[:n].copy(),
            records.sum_y[:n].copy(), records.counts[:n].copy(), records.corners[:end].copy(),
            records.ring_starts[: n + 1].copy(), records.kept[:n].copy())


@phase
def _tally(win, scratch, box, records, n):
    """First pixel, area, coordinate sums, class counts and exposed edges of the support's nuclei (rows
    n on), each one's box in scratch.nucleus_boxes, labels written if asked; returns the new row count."""
    h, w = win.support.shape
    use_classes = win.classes.shape[0] == h and win.classes.shape[1] == w
    write_labels = win.labels.shape[0] == h and win.labels.shape[1] == w
    first, area, sum_x, sum_y, counts, exposed = (records.first, records.area, records.sum_x, records.sum_y,
                                                  records.counts, records.exposed)
    classes, labels, ly, lx, oy, ox = win.classes, win.labels, box.ly, box.lx, box.oy, box.ox
    flooded = grid(scratch.flooded, box)
    row_of = scratch.row_of[: ly.size + 1]  # per marker
    row_of[:] = -1
    base = n
    nbox = scratch.nucleus_boxes  # per nucleus of this support: y0, x0, y1, x1 in the buffer
    for i in range(ly.size):
        y, x = ly[i], lx[i]
        m = flooded[y, x]
        if m == 0:
            continue
        gy, gx = y + oy, x + ox
        if row_of[m] < 0:
            row_of[m] = n
            first[n] = gy * w + gx
            nbox[n - base] = (y, x, y + 1, x + 1)
            n += 1
        r = row_of[m]
        j = r - base
        nbox[j, 1], nbox[j, 2], nbox[j, 3] = min(nbox[j, 1], x), y + 1, max(nbox[j, 3], x + 1)
        area[r] += 1
        sum_x[r] += gx
        sum_y[r] += gy
        if use_classes:
            counts[r, classes[gy, gx]] += 1
        for k in range(4):
            if flooded[y + NY[k], x + NX[k]] != m:
                exposed[r] += 1
        if write_labels:
            labels[gy, gx] = r + 1
    return n


@phase
def _outline(win, scratch, box, records, base, n, end):
    """Outlines of nuclei base..n-1 into records.corners from `end` on, as `outline.instance_ring` traces
    them, and whether each is kept (wider and taller than 1 px); returns the new end."""
    w = win.support.shape[1]
    flooded = grid(scratch.flooded, box)
    corners = records.corners
    for r in range(base, n):
        fy, fx = records.first[r] // w - box.oy, records.first[r] % w - box.ox
        m = flooded[fy, fx]
        records.ring_starts[r] = end
        stop = trace(flooded, m, fy, fx, records.exposed[r], corners, end)
        sy, sx = 0, 0
        if stop < 0:  # holes, pinches or several parts: trace the first part, filled, on its own box
            nbox = scratch.nucleus_boxes[r - base]
            sy, sx = nbox[0] - 1, nbox[1] - 1
            own_box = flooded[sy : nbox[2] + 1, sx : nbox[3] + 1]
            part = np.zeros(own_box.shape, np.int32)
            fill_first_part(own_box, m, fy - sy, fx - sx, part)
            stop = trace(part, 1, fy - sy, fx - sx, exposed_edges(part, 1), corners, end)
            if stop < 0:
                raise ValueError("nuclei: an outline could not be traced")
        xs, ys = corners[end:stop, 0], corners[end:stop, 1]
        records.kept[r] = xs.max() - xs.min() > 1 and ys.max() - ys.min() > 1
        corners[end:stop, 0] += sx + box.ox
        corners[end:stop, 1] += sy + box.oy
        end = stop
    return end
