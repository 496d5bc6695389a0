"""Nuclei (spec §6.3) and their records (§6.4), compiled, one support at a time.

Every nucleus depends only on its support (the 8-connected component of the foreground
mask holding it) and one pixel around it (see `postprocess`), so after one labelling pass over
the window the work runs support by support on the support's own box: time follows the
foreground, not the window (skimage's watershed and scipy's hole filling pass over all of it).

Why numba rather than OpenCV or rasterio: the flood must break ties exactly as skimage's
watershed does (value, then push order) and outlines must trace pixel edges exactly as
`outline` does, in one pass per support; no library exposes either, a compiled loop does both.

The rules, per support S with box B (plus a 1-px margin):
- body: S eroded by the 3×3 cross (beyond the map edge counts as foreground where `image_edges`
  says the side is the map's edge), 4-connected parts of fewer than `min_area` px removed;
- markers: inner > 0.5 in S, 4-connected parts of fewer than `marker_min_area` px removed, holes
  filled unless the hole or its 4-neighbours touch another support, labelled 4-connected, kept on
  the body;
- flood: skimage's watershed(-inner, markers, mask=body), connectivity 1 (neighbours up, left,
  right, down): labels given on push, a pixel queued at the higher of its value and the level that
  reached it, ties by push order; marker pixels enter in raster order,
  each lowered by TIE_STEP per later marker pixel of S, so equal probabilities flood in raster order
  (a heap; uint8 maps level by level in linear time, `_flood_levels`; one marker breadth-first);
- record: first pixel, area, coordinate sums, class counts, and the outline of the instance's
  first 4-connected part (holes filled), traced clockwise from the first pixel's top-left corner,
  one corner per turn, exactly as `outline.instance_ring`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from cerberus_batch.quantisation import dequantise
from cerberus_batch.tasks.instances import Measured
from cerberus_batch.tasks.postprocess import ObjectKind

TIE_STEP = 2.0**-40  # far below the 1/255 (or float16) spacing of stored probabilities
# Directions of travel along pixel edges (x right, y down) and the 4-neighbour order of skimage.
DX = np.array([1, 0, -1, 0])  # east, south, west, north
DY = np.array([0, 1, 0, -1])
NY = np.array([-1, 0, 0, 1])  # up, left, right, down
NX = np.array([0, -1, 1, 0])

jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def _read(codes, table, y, x):
    """The float32 probability at (y, x): codes looked up in the table, or float maps as they are."""


@numba.extending.overload(_read)
def _read_compiled(codes, table, y, x):
    if isinstance(codes.dtype, numba.types.Float):
        return lambda codes, table, y, x: np.float32(codes[y, x])
    return lambda codes, table, y, x: table[codes[y, x]]


@dataclass
class Supports:
    """8-connected foreground components of a window; component k is label k + 1."""

    labels: np.ndarray  # (h, w) int32, 0 = background
    boxes: np.ndarray  # (n, 4) int64 y0, x0, y1, x1 (exclusive)
    first: np.ndarray  # (n,) int64 flat window index of each component's first pixel (raster order)
    area: np.ndarray  # (n,) int64
    rows: np.ndarray  # the components' pixels, grouped by component, each group in raster order
    cols: np.ndarray
    starts: np.ndarray  # (n + 1,) where each component's pixels start in `rows` and `cols`

    def __len__(self) -> int:
        return len(self.first)

    def touching_edges(self) -> np.ndarray:
        """Which components reach the window's edge (and so may continue beyond it)."""
        h, w = self.labels.shape
        b = self.boxes
        return (b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == h) | (b[:, 3] == w)


def lookup(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table): stored probabilities as codes, and the float32 each code reads as, identical to
    `dequantise` (uint8 codes, or float16 bit patterns); float32 maps are their own codes."""
    if prob.dtype == np.uint8:
        return prob, dequantise(np.arange(256, dtype=np.uint8))
    if prob.dtype == np.float16:
        return prob.view(np.uint16), dequantise(np.arange(2**16, dtype=np.uint16).view(np.float16))
    return prob.astype(np.float32, copy=False), np.zeros(0, np.float32)


def find_supports(prob: np.ndarray, kind: ObjectKind) -> Supports:
    """Supports of a (2, h, w) stored (inner, contour) window."""
    codes, table = lookup(prob)
    return Supports(*_supports(np.ascontiguousarray(codes[0]), np.ascontiguousarray(codes[1]), table,
                               np.float32(kind.threshold)))


def measure_nuclei(
    prob: np.ndarray, classes: np.ndarray | None, supports: Supports, chosen: np.ndarray, kind: ObjectKind,
    image_edges: tuple[bool, bool, bool, bool] = (True, True, True, True), labels: np.ndarray | None = None,
) -> Measured:
    """Segment the `chosen` supports of a stored (2, h, w) window and measure their nuclei.

    `classes` is the class-index map of the window (None: no type head). When `labels` (h, w) int32
    is given, each nucleus's pixels are set to its row number + 1 there.
    """
    codes, table = lookup(prob)
    width = max(len(kind.class_names), int(classes.max(initial=0)) + 1) if classes is not None else 1
    out = np.zeros((1, 1), np.int32) if labels is None else labels
    (first, area, sum_x, sum_y, counts, corners, ring_starts, kept) = _measure(
        supports.labels, supports.boxes, supports.rows, supports.cols, supports.starts,
        np.flatnonzero(chosen).astype(np.int64), np.ascontiguousarray(codes[0]), table,
        np.zeros((1, 1), np.uint8) if classes is None else np.ascontiguousarray(classes), width,
        np.array(image_edges, np.bool_), kind.min_area, kind.marker_min_area, out, labels is not None,
    )
    w = supports.labels.shape[1]
    return Measured(
        first_y=first // w, first_x=first % w, area=area, sum_x=sum_x, sum_y=sum_y,
        class_counts=counts if classes is not None else None, corners=corners, ring_starts=ring_starts, kept=kept,
    )


def segment_nuclei(
    inner: np.ndarray, contour: np.ndarray, kind: ObjectKind,
    image_edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """Label images (instances, supports) of float probability maps: every support segmented."""
    prob = np.stack([inner, contour])
    supports = find_supports(prob, kind)
    labels = np.zeros(supports.labels.shape, np.int32)
    measure_nuclei(prob, None, supports, np.ones(len(supports), bool), kind, image_edges, labels)
    return labels, supports.labels


# ----------------------------------------------------------------------------------------- compiled


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
        if _read(inner, table, y, x) + _read(contour, table, y, x) > threshold:
            start = x
            x += 1
            while x < w and _read(inner, table, y, x) + _read(contour, table, y, x) > threshold:
                x += 1
            if at == run_x0.size:
                return -1
            run_x0[at], run_x1[at] = start, x
            at += 1
        x += 1
    return at


@jit
def _supports(inner, contour, table, threshold):
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


@jit
def _label4(on, comp, queue, sizes, border):
    """4-connected components of `on` into `comp` (1..n); sizes[1..n] and border[1..n] (touches the
    window's border) are filled in. Returns n. `queue`, `sizes` and `border` hold hh * ww + 1."""
    hh, ww = on.shape
    comp[:] = 0
    n = 0
    for y in range(hh):
        for x in range(ww):
            if not on[y, x] or comp[y, x]:
                continue
            n += 1
            comp[y, x] = n
            border[n] = False
            head, tail = 0, 1
            queue[0] = y * ww + x
            while head < tail:
                p = queue[head]
                head += 1
                py, px = p // ww, p % ww
                if py == 0 or px == 0 or py == hh - 1 or px == ww - 1:
                    border[n] = True
                for k in range(4):
                    qy, qx = py + NY[k], px + NX[k]
                    if 0 <= qy < hh and 0 <= qx < ww and on[qy, qx] and not comp[qy, qx]:
                        comp[qy, qx] = n
                        queue[tail] = qy * ww + qx
                        tail += 1
            sizes[n] = tail
    return n


@jit
def _label_list(on, comp, ww, queue, sizes, ly, lx):
    """4-connected components (1..n) of the flat `on` (rows of `ww`) into the flat `comp`, for an `on`
    inside the pixels (ly, lx), all off the border: only those are visited (and reset in `comp`),
    their neighbours found by flat offsets. Fills sizes[1..n]; returns n."""
    for i in range(ly.size):
        comp[ly[i] * ww + lx[i]] = 0
    n = 0
    for i in range(ly.size):
        start = ly[i] * ww + lx[i]
        if not on[start] or comp[start]:
            continue
        n += 1
        comp[start] = n
        queue[0] = start
        sizes[n] = _spread(on, comp, ww, queue, 1, n)
    return n


@jit
def _spread(on, comp, ww, queue, tail, value):
    """Give `value` in the flat `comp` to every `on` pixel 4-connected to the `tail` pixels queued
    (already given it) and not given a value yet; returns how many pixels have it."""
    head = 0
    while head < tail:
        p = queue[head]
        head += 1
        for q in (p - ww, p - 1, p + 1, p + ww):
            if on[q] and not comp[q]:
                comp[q] = value
                queue[tail] = q
                tail += 1
    return tail


@jit
def _enclosed(seeds, comp, queue, queue_x, open_to_border, ly, lx, spans):
    """4-connected components of the non-seed pixels that seeds may enclose, into `comp` (1..n);
    open_to_border[c] says component c reaches the window's border (so it is no hole). Returns n.

    Only pixels with a seed on all four sides along their row and column can be enclosed; the
    others reach the border in a straight line. Labelling just those keeps the work inside the
    seeds' span (most of a support's box is open background)."""
    hh, ww = seeds.shape
    left, right, top, bottom = spans[:hh], spans[hh : 2 * hh], spans[2 * hh : 2 * hh + ww], spans[2 * hh + ww : 2 * (hh + ww)]
    left[:], right[:], top[:], bottom[:] = ww, -1, hh, -1
    for i in range(ly.size):  # every seed is one of these pixels
        y, x = ly[i], lx[i]
        if seeds[y, x]:
            left[y], right[y] = min(left[y], x), max(right[y], x)
            top[x], bottom[x] = min(top[x], y), max(bottom[x], y)
    for y in range(hh):
        for x in range(left[y] + 1, right[y]):
            comp[y, x] = 0
    n = 0
    for y in range(hh):
        for x in range(left[y] + 1, right[y]):
            if seeds[y, x] or comp[y, x] or not top[x] < y < bottom[x]:
                continue
            n += 1
            comp[y, x] = n
            open_to_border[n] = False
            head, tail = 0, 1
            queue[0], queue_x[0] = y, x
            while head < tail:
                py, px = queue[head], queue_x[head]
                head += 1
                for k in range(4):
                    qy, qx = py + NY[k], px + NX[k]
                    if seeds[qy, qx]:
                        continue
                    if left[qy] < qx < right[qy] and top[qx] < qy < bottom[qx]:
                        if comp[qy, qx]:
                            continue
                        comp[qy, qx] = n
                        queue[tail], queue_x[tail] = qy, qx
                        tail += 1
                    else:  # a pixel that sees the border
                        open_to_border[n] = True
    return n, left, right


@jit
def _heap_push(values, ages, items, size, value, age, item):
    i = size
    while i > 0:
        parent = (i - 1) // 2
        if values[parent] < value or (values[parent] == value and ages[parent] < age):
            break
        values[i], ages[i], items[i] = values[parent], ages[parent], items[parent]
        i = parent
    values[i], ages[i], items[i] = value, age, item
    return size + 1


@jit
def _heap_pop(values, ages, items, size):
    """Remove the smallest (value, age); returns its value, its item and the new size."""
    top, top_value = items[0], values[0]
    size -= 1
    value, age, item = values[size], ages[size], items[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and (values[child + 1] < values[child]
                                 or (values[child + 1] == values[child] and ages[child + 1] < ages[child])):
            child += 1
        if value < values[child] or (value == values[child] and age < ages[child]):
            break
        values[i], ages[i], items[i] = values[child], ages[child], items[child]
        i = child
    values[i], ages[i], items[i] = value, age, item
    return top_value, top, size


def _code(codes, y, x):
    """The stored code at (y, x) as an int."""


@numba.extending.overload(_code)
def _code_compiled(codes, y, x):
    if isinstance(codes.dtype, numba.types.Integer):
        return lambda codes, y, x: np.int64(codes[y, x])
    return lambda codes, y, x: np.int64(0)  # float maps have no codes (and take the heap)


@jit
def _append(link, heads, tails, level, q):
    link[q] = -1
    if tails[level] < 0:
        heads[level] = q
    else:
        link[tails[level]] = q
    tails[level] = q


@jit
def _flood_levels(level, order, marked, ww, body, flooded, queue, link, heads, tails):
    """The heap's flood (same pops, same labels) for maps of 256 levels, in linear time.

    The flood never goes down (a pixel is queued at the higher of its level and its pusher's), so
    the levels can be taken in turn, each as a FIFO (pushes come in age order). Within a level the
    TIE_STEP rule puts each marker pixel's own sub-level first, in raster order, drained with what
    it floods below the level; then the level's FIFO, headed by the last marker pixel (lowered by
    0, pushed before any other). `level` (flat box px, 0 = highest probability), `order` the
    marker pixels on the body in raster order, already labelled in `flooded`; `link` (box px),
    `heads` and `tails` (256) are scratch."""
    heads[:] = -1
    tails[:] = -1
    start = np.zeros(257, np.int64)  # the marker pixels but the last, by level, each level's in raster order
    for j in range(marked - 1):
        start[level[order[j]] + 1] += 1
    for v in range(256):
        start[v + 1] += start[v]
    fill = start[:256].copy()
    by_level = np.empty(max(marked - 1, 1), np.int64)
    for j in range(marked - 1):
        v = level[order[j]]
        by_level[fill[v]] = order[j]
        fill[v] += 1
    _append(link, heads, tails, level[order[marked - 1]], order[marked - 1])
    for v in range(256):
        for j in range(start[v], start[v + 1]):
            queue[0] = by_level[j]
            head, tail = 0, 1
            while head < tail:
                p = queue[head]
                head += 1
                for q in (p - ww, p - 1, p + 1, p + ww):
                    if body[q] and not flooded[q]:
                        flooded[q] = flooded[p]
                        if level[q] < v:
                            queue[tail] = q
                            tail += 1
                        else:
                            _append(link, heads, tails, level[q], q)
        p = heads[v]
        while p >= 0:
            for q in (p - ww, p - 1, p + 1, p + ww):
                if body[q] and not flooded[q]:
                    flooded[q] = flooded[p]
                    _append(link, heads, tails, max(level[q], v), q)
            p = link[p]


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
def _trace(img, value, fy, fx, edges, corners, at):
    """Turn corners of the boundary of img == value from its first pixel (fy, fx), written to
    corners[at:]. Returns the new end, or -1 unless that boundary is the set's only one."""
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
def _exposed_edges(img, value):
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
def _first_part_filled(img, value, fy, fx, part):
    """part = the 4-connected part of img == value holding (fy, fx), holes filled (as `outline.first_part`)."""
    hh, ww = img.shape
    queue = np.empty(hh * ww + 1, np.int64)
    comp = np.empty((hh, ww), np.int32)
    sizes = np.empty(hh * ww + 1, np.int64)
    border = np.empty(hh * ww + 1, np.bool_)
    on = np.empty((hh, ww), np.bool_)
    for y in range(hh):
        for x in range(ww):
            on[y, x] = img[y, x] == value
    _label4(on, comp, queue, sizes, border)
    own = comp[fy, fx]
    for y in range(hh):
        for x in range(ww):
            on[y, x] = comp[y, x] != own  # outside the part
    _label4(on, comp, queue, sizes, border)
    for y in range(hh):
        for x in range(ww):
            part[y, x] = not on[y, x] or not border[comp[y, x]]  # the part, or a hole in it


@jit
def _measure(support, boxes, rows, cols, starts, chosen, inner, table, classes, n_classes, edges, min_area,
             marker_min_area, labels_out, write_labels):
    h, w = support.shape
    total = 0
    for s in chosen:
        total += starts[s + 1] - starts[s]
    cap = total // marker_min_area + 1  # every nucleus holds a marker of at least that many px
    first = np.empty(cap, np.int64)
    area = np.zeros(cap, np.int64)
    sum_x = np.zeros(cap, np.int64)
    sum_y = np.zeros(cap, np.int64)
    counts = np.zeros((cap, n_classes), np.int64)
    kept = np.zeros(cap, np.bool_)
    exposed = np.zeros(cap, np.int64)
    corners = np.empty((4 * total + 1, 2), np.float64)  # at most one corner per boundary edge
    ring_starts = np.zeros(cap + 1, np.int64)
    n = 0
    end = 0
    use_classes = classes.shape[0] == h and classes.shape[1] == w
    # Scratch for the largest support, reused by each: most supports are small, and allocating
    # a dozen arrays per support would cost more than the work on it.
    most_px, most_box, most_sides = 1, 1, 1
    for s in chosen:
        hh, ww = boxes[s, 2] - boxes[s, 0] + 2, boxes[s, 3] - boxes[s, 1] + 2
        most_px = max(most_px, starts[s + 1] - starts[s] + 1)
        most_box, most_sides = max(most_box, hh * ww + 1), max(most_sides, 2 * (hh + ww))
    if most_box >= 2**31:
        raise ValueError("nuclei: a support's box holds 2**31 px or more")
    scratch_bool = np.empty((4, most_box), np.bool_)  # eroded, seeds, body, border
    scratch_int = np.empty((3, most_box), np.int32)  # comp (then the flood's levels), markers, flooded
    queue_all = np.empty(most_box, np.int32)
    queue_x_all = np.empty(most_box, np.int32)  # `_enclosed`'s, then the level flood's links
    value_all = np.empty(most_box, np.float32)
    heads, tails = np.empty(256, np.int64), np.empty(256, np.int64)
    spans = np.empty(most_sides, np.int64)
    scratch_px = np.empty((6, most_px), np.int64)  # ly, lx, sizes, ages (or the level flood's order), items, row_of
    values_all = np.empty(most_px, np.float64)
    box_all = np.empty((most_px, 4), np.int64)
    for s in chosen:
        label = s + 1
        oy, ox = boxes[s, 0] - 1, boxes[s, 1] - 1
        hh, ww = boxes[s, 2] - boxes[s, 0] + 2, boxes[s, 3] - boxes[s, 1] + 2
        count = starts[s + 1] - starts[s]
        # The support's pixels, raster order, in buffer coordinates: most passes visit just these
        # (a support's box is mostly background).
        size2 = hh * ww
        ly, lx = scratch_px[0, :count], scratch_px[1, :count]
        for i in range(count):
            ly[i], lx[i] = rows[starts[s] + i] - oy, cols[starts[s] + i] - ox
        queue, queue_x = queue_all[: size2 + 1], queue_x_all[: size2 + 1]
        sizes = scratch_px[2, : count + 1]
        border = scratch_bool[3, : size2 + 1]
        comp = scratch_int[0, :size2].reshape((hh, ww))
        # body: eroded by the cross, small parts removed; seeds: inner > 0.5, small parts removed
        eroded = scratch_bool[0, :size2].reshape((hh, ww))
        seeds = scratch_bool[1, :size2].reshape((hh, ww))
        eroded[:] = False
        seeds[:] = False
        inside = oy >= 0 and ox >= 0 and oy + hh <= h and ox + ww <= w  # no neighbour beyond the window
        for i in range(count):
            y, x = ly[i] + oy, lx[i] + ox
            if inside:
                keep = (support[y - 1, x] == label and support[y, x - 1] == label and support[y, x + 1] == label
                        and support[y + 1, x] == label)
            else:
                keep = True
                for k in range(4):
                    qy, qx = y + NY[k], x + NX[k]
                    if qy < 0:
                        keep = keep and edges[0]
                    elif qy >= h:
                        keep = keep and edges[1]
                    elif qx < 0:
                        keep = keep and edges[2]
                    elif qx >= w:
                        keep = keep and edges[3]
                    else:
                        keep = keep and support[qy, qx] == label
            eroded[ly[i], lx[i]] = keep
            seeds[ly[i], lx[i]] = _read(inner, table, y, x) > 0.5
        comp_f = comp.reshape(size2)
        _label_list(eroded.reshape(size2), comp_f, ww, queue, sizes, ly, lx)
        body = scratch_bool[2, :size2].reshape((hh, ww))
        body[:] = False
        for i in range(count):
            c = comp[ly[i], lx[i]]
            body[ly[i], lx[i]] = eroded[ly[i], lx[i]] and sizes[c] >= min_area
        # markers: the seeds' parts, relabelled below only if filling holes joins or grows them
        markers = scratch_int[1, :size2].reshape((hh, ww))
        _label_list(seeds.reshape(size2), markers.reshape(size2), ww, queue, sizes, ly, lx)
        for i in range(count):
            y, x = ly[i], lx[i]
            if markers[y, x] and sizes[markers[y, x]] < marker_min_area:
                seeds[y, x] = False
                markers[y, x] = 0
        # holes of the markers, filled unless they touch another support
        holes, left, right = _enclosed(seeds, comp, queue, queue_x, border, ly, lx, spans)
        clean = np.ones(holes + 1, np.bool_)
        for y in range(hh):
            for x in range(left[y] + 1, right[y]):
                c = comp[y, x]
                if c == 0 or border[c] or not clean[c]:
                    continue
                gy, gx = y + oy, x + ox
                other = support[gy, gx]
                if other != 0 and other != label:
                    clean[c] = False
                for k in range(4):
                    qy, qx = gy + NY[k], gx + NX[k]
                    if 0 <= qy < h and 0 <= qx < w:
                        other = support[qy, qx]
                        if other != 0 and other != label:
                            clean[c] = False
        filled = False
        for y in range(hh):
            for x in range(left[y] + 1, right[y]):
                c = comp[y, x]
                if c and not seeds[y, x] and not border[c] and clean[c]:
                    seeds[y, x] = True
                    filled = True
        if filled:
            markers[:] = 0  # filled holes may lie off the support, where `_label_list` does not reset
            # every marker holds a seed, one of these pixels
            _label_list(seeds.reshape(size2), markers.reshape(size2), ww, queue, sizes, ly, lx)
        # flood from the markers on the body
        marked, several, only = 0, False, 0
        for i in range(count):
            m = markers[ly[i], lx[i]]
            if m and body[ly[i], lx[i]]:
                marked += 1
                several = several or (only != 0 and m != only)
                only = m
        if marked == 0:
            continue  # no nucleus
        flooded = scratch_int[2, :size2].reshape((hh, ww))
        flooded[:] = 0
        body_f, flooded_f = body.reshape(size2), flooded.reshape(size2)
        if not several:
            # One marker: it takes every body pixel it reaches, whatever the order.
            tail = 0
            for i in range(count):
                y, x = ly[i], lx[i]
                if markers[y, x] and body[y, x]:
                    flooded[y, x] = only
                    queue[tail] = y * ww + x
                    tail += 1
            _spread(body_f, flooded_f, ww, queue, tail, only)
        elif table.size == 256:  # uint8 maps: levels in turn
            levels, order = comp.reshape(size2), scratch_px[3, :marked]  # both free by now
            j = 0
            for i in range(count):
                y, x = ly[i], lx[i]
                levels[y * ww + x] = 255 - _code(inner, y + oy, x + ox)
                if markers[y, x] and body[y, x]:
                    flooded[y, x] = markers[y, x]
                    order[j] = y * ww + x
                    j += 1
            _flood_levels(levels, order, marked, ww, body_f, flooded_f, queue, queue_x, heads, tails)
        else:
            value = value_all[:size2]  # -inner, the flood's height, at the support's pixels
            values = values_all[: count + 1]
            ages, items = scratch_px[3, : count + 1], scratch_px[4, : count + 1]
            size = 0
            rank = 0
            for i in range(count):
                y, x = ly[i], lx[i]
                value[y * ww + x] = -_read(inner, table, y + oy, x + ox)
            for i in range(count):
                y, x = ly[i], lx[i]
                if markers[y, x] and body[y, x]:
                    flooded[y, x] = markers[y, x]
                    height = value[y * ww + x] - np.float64(marked - 1 - rank) * TIE_STEP
                    size = _heap_push(values, ages, items, size, height, 0, y * ww + x)
                    rank += 1
            age = 1
            while size > 0:
                level, p, size = _heap_pop(values, ages, items, size)
                for q in (p - ww, p - 1, p + 1, p + ww):
                    if body_f[q] and not flooded_f[q]:
                        age += 1
                        flooded_f[q] = flooded_f[p]
                        size = _heap_push(values, ages, items, size, max(value[q], level), age, q)
        # records, nuclei in the order of their first pixels
        row_of = scratch_px[5, : count + 1]
        row_of[:] = -1
        base = n
        box = box_all[: count + 1]  # per nucleus of this support: y0, x0, y1, x1 in the buffer
        for i in range(count):
            y, x = ly[i], lx[i]
            m = flooded[y, x]
            if m == 0:
                continue
            if row_of[m] < 0:
                row_of[m] = n
                first[n] = (y + oy) * w + x + ox
                box[n - base] = (y, x, y + 1, x + 1)
                n += 1
            r = row_of[m]
            j = r - base
            box[j, 1], box[j, 2], box[j, 3] = min(box[j, 1], x), y + 1, max(box[j, 3], x + 1)
            area[r] += 1
            sum_x[r] += x + ox
            sum_y[r] += y + oy
            if use_classes:
                counts[r, classes[y + oy, x + ox]] += 1
            for k in range(4):
                if flooded[y + NY[k], x + NX[k]] != m:
                    exposed[r] += 1
            if write_labels:
                labels_out[y + oy, x + ox] = r + 1
        for r in range(base, n):
            fy, fx = first[r] // w - oy, first[r] % w - ox
            m = flooded[fy, fx]
            ring_starts[r] = end
            stop = _trace(flooded, m, fy, fx, exposed[r], corners, end)
            sy, sx = 0, 0
            if stop < 0:  # holes, pinches or several parts: trace the first part, filled, on its own box
                j = r - base
                sy, sx = box[j, 0] - 1, box[j, 1] - 1
                own_box = flooded[sy : box[j, 2] + 1, sx : box[j, 3] + 1]
                part = np.zeros(own_box.shape, np.int32)
                _first_part_filled(own_box, m, fy - sy, fx - sx, part)
                stop = _trace(part, 1, fy - sy, fx - sx, _exposed_edges(part, 1), corners, end)
                if stop < 0:
                    raise ValueError("nuclei: an outline could not be traced")
            xs, ys = corners[end:stop, 0], corners[end:stop, 1]
            kept[r] = xs.max() - xs.min() > 1 and ys.max() - ys.min() > 1
            corners[end:stop, 0] += sx + ox
            corners[end:stop, 1] += sy + oy
            end = stop
        ring_starts[n] = end
    return (first[:n].copy(), area[:n].copy(), sum_x[:n].copy(), sum_y[:n].copy(), counts[:n].copy(),
            corners[:end].copy(), ring_starts[: n + 1].copy(), kept[:n].copy())
