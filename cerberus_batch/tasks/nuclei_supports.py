"""The supports of a window (see `nuclei`), compiled: foreground runs joined by union-find."""

from __future__ import annotations

import numpy as np

from cerberus_batch.tasks.compiled import jit, read


@jit
def _root(parent, r):
    while parent[r] != r:
        parent[r] = parent[parent[r]]  # path halving
        r = parent[r]
    return r


@jit
def _doubled(a):
    grown = np.empty(2 * a.size, a.dtype)
    grown[: a.size] = a
    return grown


@jit
def _row_runs(inner, contour, table, threshold, y, run_x0, run_x1, at):
    """The foreground runs of row y, written from `at` on; returns the new end, or -1 if they do not fit."""
    w = inner.shape[1]
    x = 0
    while x < w:
        if read(inner, table, y, x) + read(contour, table, y, x) > threshold:
            start = x
            x += 1
            while x < w and read(inner, table, y, x) + read(contour, table, y, x) > threshold:
                x += 1
            if at == run_x0.size:
                return -1
            run_x0[at], run_x1[at] = start, x
            at += 1
        x += 1
    return at


@jit
def label_supports(inner, contour, table, threshold):
    h, w = inner.shape
    # Runs of foreground along rows, in raster order; joined to the previous row's runs they touch
    # (8-connected) by union-find, each component rooted at its first run. Room doubles as needed
    # (between rows: arrays replaced inside the pixel loop would slow all of it down).
    room = max(h, 16)
    run_y, run_x0, run_x1 = np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.int64)  # x1 exclusive
    parent = np.empty(room, np.int64)
    n_runs = 0
    above = 0  # the previous row's first run
    for y in range(h):
        here = n_runs
        end = _row_runs(inner, contour, table, threshold, y, run_x0, run_x1, here)
        while end < 0:
            run_y, run_x0, run_x1, parent = _doubled(run_y), _doubled(run_x0), _doubled(run_x1), _doubled(parent)
            end = _row_runs(inner, contour, table, threshold, y, run_x0, run_x1, here)
        for r in range(here, end):
            run_y[r], parent[r] = y, r
        n_runs = end
        if y > 0:
            q = above
            for r in range(here, n_runs):
                while q < here and run_x1[q] < run_x0[r]:  # ends left of r's reach
                    q += 1
                k = q
                while k < here and run_x0[k] <= run_x1[r]:
                    a, b = _root(parent, r), _root(parent, k)
                    if a < b:
                        parent[b] = a
                    elif b < a:
                        parent[a] = b
                    k += 1
        above = here
    # Components numbered in raster order of their first runs (so of their first pixels).
    label = np.empty(n_runs, np.int32)
    n = 0
    for r in range(n_runs):
        root = _root(parent, r)
        if root == r:
            n += 1
            label[r] = n
        else:
            label[r] = label[root]
    starts = np.zeros(n + 1, np.int64)
    boxes = np.empty((n, 4), np.int64)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = h, w, 0, 0
    for r in range(n_runs):
        k = label[r] - 1
        starts[k + 1] += run_x1[r] - run_x0[r]
        boxes[k, 0] = min(boxes[k, 0], run_y[r])
        boxes[k, 1] = min(boxes[k, 1], run_x0[r])
        boxes[k, 2] = run_y[r] + 1
        boxes[k, 3] = max(boxes[k, 3], run_x1[r])
    for k in range(n):
        starts[k + 1] += starts[k]
    count = starts[n]
    labels = np.zeros((h, w), np.int32)
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    fill = starts[:n].copy()
    for r in range(n_runs):
        k = label[r] - 1
        at = fill[k]
        for x in range(run_x0[r], run_x1[r]):
            labels[run_y[r], x] = k + 1
            rows[at], cols[at] = run_y[r], x
            at += 1
        fill[k] = at
    first = rows[starts[:n]] * w + cols[starts[:n]]
    return labels, boxes, first, np.diff(starts), rows, cols, starts
