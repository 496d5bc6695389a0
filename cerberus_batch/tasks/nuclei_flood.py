"""The compiled flood of one support's markers over its body (rules in `nuclei`): skimage's watershed,
ties broken as it breaks them; by a heap, or for uint8 maps level by level in linear time."""

from __future__ import annotations

import numpy as np

from cerberus_batch.tasks.compiled import code, jit, phase, read, spread
from cerberus_batch.tasks.nuclei_buffers import grid

TIE_STEP = 2.0**-40  # far below the 1/255 (or float16) spacing of stored probabilities


@phase
def flood(win, scratch, box):
    """scratch.flooded: each body pixel's marker (0: none reached it). False when no marker is on the body."""
    markers, body, flooded, queue = scratch.markers, scratch.body, scratch.flooded, scratch.queue
    ly, lx, ww = box.ly, box.lx, box.ww
    marked, several, only = 0, False, 0
    for i in range(ly.size):
        p = ly[i] * ww + lx[i]
        m = markers[p]
        if m and body[p]:
            marked += 1
            several = several or (only != 0 and m != only)
            only = m
    if marked == 0:
        return False
    grid(flooded, box)[:] = 0
    if not several:
        # One marker: it takes every body pixel it reaches, whatever the order.
        tail = 0
        for i in range(ly.size):
            p = ly[i] * ww + lx[i]
            if markers[p] and body[p]:
                flooded[p] = only
                queue[tail] = p
                tail += 1
        spread(body, flooded, ww, queue, tail, only)
    elif win.table.size == 256:
        _flood_by_level(win, scratch, box, marked)
    else:
        _flood_by_heap(win, scratch, box, marked)
    return True


@phase
def _flood_by_heap(win, scratch, box, marked):
    """Marker pixels pushed in raster order, each lowered by TIE_STEP per later one, at -inner."""
    ly, lx, ww, inner, table = box.ly, box.lx, box.ww, win.inner, win.table
    height = scratch.heights  # -inner, the flood's height, at the support's pixels
    values, ages, items = scratch.values, scratch.ages, scratch.items
    markers, body, flooded = scratch.markers, scratch.body, scratch.flooded
    for i in range(ly.size):
        height[ly[i] * ww + lx[i]] = -read(inner, table, ly[i] + box.oy, lx[i] + box.ox)
    size = 0
    rank = 0
    for i in range(ly.size):
        p = ly[i] * ww + lx[i]
        if markers[p] and body[p]:
            flooded[p] = markers[p]
            size = _heap_push(values, ages, items, size, height[p] - np.float64(marked - 1 - rank) * TIE_STEP, 0, p)
            rank += 1
    age = 1
    while size > 0:
        level, p, size = _heap_pop(values, ages, items, size)
        for q in (p - ww, p - 1, p + 1, p + ww):
            if body[q] and not flooded[q]:
                age += 1
                flooded[q] = flooded[p]
                size = _heap_push(values, ages, items, size, max(height[q], level), age, q)


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


@phase
def _flood_by_level(win, scratch, box, marked):
    """scratch.levels (255 - code, 0 = highest probability) at the support's pixels, scratch.order the
    marker pixels on the body in raster order (labelled in flooded), then the level flood."""
    ly, lx, ww, inner = box.ly, box.lx, box.ww, win.inner
    levels, order, markers, body, flooded = scratch.levels, scratch.order, scratch.markers, scratch.body, scratch.flooded
    j = 0
    lowest, highest = 255, 0  # the flood's levels: a pixel is queued at its own level or its pusher's
    for i in range(ly.size):
        p = ly[i] * ww + lx[i]
        v = 255 - code(inner, ly[i] + box.oy, lx[i] + box.ox)
        levels[p] = v
        lowest, highest = min(lowest, v), max(highest, v)
        if markers[p] and body[p]:
            flooded[p] = markers[p]
            order[j] = p
            j += 1
    _flood_levels(scratch, box.ww, marked, lowest, highest)


@jit
def _append(links, heads, tails, level, q):
    """Queue q at the end of level's FIFO (first heads[level], last tails[level], linked by links)."""
    links[q] = -1
    if tails[level] < 0:
        heads[level] = q
    else:
        links[tails[level]] = q
    tails[level] = q


@phase
def _by_level(scratch, marked, lowest, highest):
    """scratch.by_level: the marker pixels but the last, by level, each level's in raster order;
    scratch.level_starts: where each level from lowest to highest starts there."""
    level, order, by_level = scratch.levels, scratch.order, scratch.by_level
    start, fill = scratch.level_starts, scratch.level_fill
    start[lowest : highest + 2] = 0
    for j in range(marked - 1):
        start[level[order[j]] + 1] += 1
    for v in range(lowest, highest + 1):
        start[v + 1] += start[v]
    fill[lowest : highest + 1] = start[lowest : highest + 1]
    for j in range(marked - 1):
        v = level[order[j]]
        by_level[fill[v]] = order[j]
        fill[v] += 1


@phase
def _flood_levels(scratch, ww, marked, lowest, highest):
    """The heap's flood (same pops, same labels) for maps of 256 levels, in linear time.

    The flood never goes down (a pixel is queued at the higher of its level and its pusher's), so
    the levels can be taken in turn, each as a FIFO (pushes come in age order). Within a level the
    TIE_STEP rule puts each marker pixel's own sub-level first, in raster order, drained with what
    it floods below the level; then the level's FIFO, headed by the last marker pixel (lowered by
    0, pushed before any other)."""
    level, body, flooded, queue = scratch.levels, scratch.body, scratch.flooded, scratch.queue
    links, heads, tails = scratch.links, scratch.heads, scratch.tails
    heads[lowest : highest + 1] = -1
    tails[lowest : highest + 1] = -1
    _by_level(scratch, marked, lowest, highest)
    by_level, start = scratch.by_level, scratch.level_starts
    _append(links, heads, tails, level[scratch.order[marked - 1]], scratch.order[marked - 1])
    for v in range(lowest, highest + 1):  # the levels of the support's pixels: no other can be queued
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
                            _append(links, heads, tails, level[q], q)
        p = heads[v]
        while p >= 0:
            for q in (p - ww, p - 1, p + 1, p + ww):
                if body[q] and not flooded[q]:
                    flooded[q] = flooded[p]
                    _append(links, heads, tails, max(level[q], v), q)
            p = links[p]
