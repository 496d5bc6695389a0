"""Compiled helpers the nuclei phases and `outline` share: the jit options, reading stored maps, and the
one breadth-first spread every labelling uses."""

from __future__ import annotations

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# For a phase called from one place: inlined into its caller before typing, so a chain of phases is
# typed and optimised once (a call compiles the callee again into every caller's module).
phase = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
NY = np.array([-1, 0, 0, 1])  # skimage's 4-neighbour order: up, left, right, down
NX = np.array([0, -1, 1, 0])


def read(codes, table, y, x):
    """The float32 probability at (y, x): codes looked up in the table, or float maps as they are."""


@numba.extending.overload(read)
def _read_compiled(codes, table, y, x):
    if isinstance(codes.dtype, numba.types.Float):
        return lambda codes, table, y, x: np.float32(codes[y, x])
    return lambda codes, table, y, x: table[codes[y, x]]


def code(codes, y, x):
    """The stored code at (y, x) as an int."""


@numba.extending.overload(code)
def _code_compiled(codes, y, x):
    if isinstance(codes.dtype, numba.types.Integer):
        return lambda codes, y, x: np.int64(codes[y, x])
    return lambda codes, y, x: np.int64(0)  # float maps have no codes (and take the heap)


@jit
def spread(on, comp, ww, queue, tail, value):
    """Give `value` in the flat `comp` to every `on` pixel 4-connected to the `tail` pixels queued
    (already given it) and not given a value yet; returns how many pixels have it. `on` (rows of
    `ww`) is off on a frame of one px around whatever is spread over, so neighbours are flat offsets."""
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
def label_parts(on, comp, ww, queue, sizes, ly, lx):
    """4-connected parts (1..n) of the flat `on` into the flat `comp`, for an `on` inside the pixels
    (ly, lx), all off the frame: only those are visited (and reset in `comp`). Fills sizes[1..n];
    returns n."""
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
        sizes[n] = spread(on, comp, ww, queue, 1, n)
    return n
