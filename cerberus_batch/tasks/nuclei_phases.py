"""The compiled phases of one support before its flood (rules in `nuclei`): erosion into the body,
markers, and the markers' holes filled."""

from __future__ import annotations

from cerberus_batch.tasks.compiled import NX, NY, label_parts, phase, read, spread
from cerberus_batch.tasks.nuclei_buffers import grid


@phase
def _cross_kept(win, label, y, x):
    """Whether the cross around window pixel (y, x) lies in the support; beyond the map edge counts as
    in it where win.edges says the side is the map's edge."""
    h, w = win.support.shape
    keep = True
    for k in range(4):
        qy, qx = y + NY[k], x + NX[k]
        if qy < 0:
            keep = keep and win.edges[0]
        elif qy >= h:
            keep = keep and win.edges[1]
        elif qx < 0:
            keep = keep and win.edges[2]
        elif qx >= w:
            keep = keep and win.edges[3]
        else:
            keep = keep and win.support[qy, qx] == label
    return keep


@phase
def erode(win, box, scratch):
    """scratch.eroded: the support eroded by the 3×3 cross."""
    h, w = win.support.shape
    support, label, ly, lx, oy, ox = win.support, box.label, box.ly, box.lx, box.oy, box.ox  # locals in loops
    eroded = grid(scratch.eroded, box)
    eroded[:] = False
    inside = oy >= 0 and ox >= 0 and oy + box.hh <= h and ox + box.ww <= w  # no neighbour beyond
    for i in range(ly.size):
        y, x = ly[i] + oy, lx[i] + ox
        if inside:
            keep = (support[y - 1, x] == label and support[y, x - 1] == label and support[y, x + 1] == label
                    and support[y + 1, x] == label)
        else:
            keep = _cross_kept(win, label, y, x)
        eroded[ly[i], lx[i]] = keep


@phase
def keep_body(scratch, box, min_area):
    """scratch.body: the eroded support's 4-connected parts of min_area px or more."""
    eroded, parts, sizes, ly, lx, ww = scratch.eroded, scratch.body_parts, scratch.part_sizes, box.ly, box.lx, box.ww
    label_parts(eroded, parts, ww, scratch.queue, sizes, ly, lx)
    body = scratch.body
    grid(body, box)[:] = False
    for i in range(ly.size):
        p = ly[i] * ww + lx[i]
        body[p] = eroded[p] and sizes[parts[p]] >= min_area


@phase
def find_markers(win, box, scratch, marker_min_area):
    """scratch.seeds: inner > 0.5 on the support, 4-connected parts of fewer than marker_min_area px
    removed; scratch.markers: those parts labelled."""
    seeds, markers, sizes, ly, lx, ww = scratch.seeds, scratch.markers, scratch.part_sizes, box.ly, box.lx, box.ww
    inner, table = win.inner, win.table
    grid(seeds, box)[:] = False
    for i in range(ly.size):
        seeds[ly[i] * ww + lx[i]] = read(inner, table, ly[i] + box.oy, lx[i] + box.ox) > 0.5
    label_parts(seeds, markers, ww, scratch.queue, sizes, ly, lx)
    for i in range(ly.size):
        p = ly[i] * ww + lx[i]
        m = markers[p]
        if m and sizes[m] < marker_min_area:
            seeds[p] = False
            markers[p] = 0


@phase
def _spans(scratch, box):
    """Per row the first and last seed's x (left, right), per column the first and last seed's y (top,
    bottom): only pixels strictly inside both can be enclosed, the others reach the border straight."""
    hh, ww = box.hh, box.ww
    spans = scratch.spans
    left, right, top, bottom = spans[:hh], spans[hh : 2 * hh], spans[2 * hh : 2 * hh + ww], spans[2 * hh + ww : 2 * (hh + ww)]
    left[:], right[:], top[:], bottom[:] = ww, -1, hh, -1
    seeds, ly, lx = grid(scratch.seeds, box), box.ly, box.lx
    for i in range(ly.size):  # every seed is one of these pixels
        y, x = ly[i], lx[i]
        if seeds[y, x]:
            left[y], right[y] = min(left[y], x), max(right[y], x)
            top[x], bottom[x] = min(top[x], y), max(bottom[x], y)
    return left, right, top, bottom


@phase
def _label_holes(scratch, box, left, right, top, bottom):
    """scratch.holes: 4-connected parts (1..n) of the non-seed pixels seeds may enclose (labelling
    just those keeps the work inside the seeds' span: most of a support's box is open background);
    scratch.open_to_border[c]: part c reaches a pixel that sees the border (so it is no hole). Returns n."""
    enclosable, holes, seeds = grid(scratch.enclosable, box), grid(scratch.holes, box), grid(scratch.seeds, box)
    queue, open_to_border, ww = scratch.queue, scratch.open_to_border, box.ww
    enclosable[:] = False
    for y in range(box.hh):
        for x in range(left[y] + 1, right[y]):
            holes[y, x] = 0
            enclosable[y, x] = not seeds[y, x] and top[x] < y < bottom[x]
    n = 0
    for y in range(box.hh):
        for x in range(left[y] + 1, right[y]):
            if enclosable[y, x] and not holes[y, x]:
                n += 1
                holes[y, x] = n
                queue[0] = y * ww + x
                size = spread(scratch.enclosable, scratch.holes, ww, queue, 1, n)
                open_to_border[n] = False
                for j in range(size):  # the hole's pixels
                    p = queue[j]
                    for q in (p - ww, p - 1, p + 1, p + ww):
                        if not scratch.seeds[q] and not scratch.enclosable[q]:
                            open_to_border[n] = True
    return n


@phase
def _clean_holes(win, scratch, box, n, left, right):
    """scratch.clean, per hole 1..n: whether neither it nor its 4-neighbours touch another support."""
    h, w = win.support.shape
    holes, open_to_border, support, label = grid(scratch.holes, box), scratch.open_to_border, win.support, box.label
    clean = scratch.clean
    clean[: n + 1] = True
    for y in range(box.hh):
        for x in range(left[y] + 1, right[y]):
            c = holes[y, x]
            if c == 0 or open_to_border[c] or not clean[c]:
                continue
            gy, gx = y + box.oy, x + box.ox
            other = support[gy, gx]
            if other != 0 and other != label:
                clean[c] = False
            for k in range(4):
                qy, qx = gy + NY[k], gx + NX[k]
                if 0 <= qy < h and 0 <= qx < w:
                    other = support[qy, qx]
                    if other != 0 and other != label:
                        clean[c] = False


@phase
def fill_holes(win, scratch, box):
    """The markers' holes filled (in scratch.seeds and scratch.markers) unless they touch another support."""
    left, right, top, bottom = _spans(scratch, box)
    n = _label_holes(scratch, box, left, right, top, bottom)
    _clean_holes(win, scratch, box, n, left, right)
    holes, seeds = grid(scratch.holes, box), grid(scratch.seeds, box)
    open_to_border, clean = scratch.open_to_border, scratch.clean
    filled = False
    for y in range(box.hh):
        for x in range(left[y] + 1, right[y]):
            c = holes[y, x]
            if c and not seeds[y, x] and not open_to_border[c] and clean[c]:
                seeds[y, x] = True
                filled = True
    if filled:
        grid(scratch.markers, box)[:] = 0  # filled holes may lie off the support, where `label_parts` does not reset
        # every marker holds a seed, one of these pixels
        label_parts(scratch.seeds, scratch.markers, box.ww, scratch.queue, scratch.part_sizes, box.ly, box.lx)
