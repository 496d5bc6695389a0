"""The output grid every stage shares.

Outputs are laid on cells of CELL processing pixels starting at the slide's
processing-resolution pixel (0, 0) — the reference's patch output grid. A model
sees CONTEXT extra input pixels on every side of the output it predicts
(448-px patches keep their centre 144 px: (448 - 144) / 2 = 152).

Boxes come in three orders, one type each. They are NamedTuples, so they unpack
and index like plain tuples, and a plain 4-tuple in the same order serves too.
"""

from __future__ import annotations

from typing import NamedTuple

CELL = 144
CONTEXT = 152


def whole_cells(shape: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of an image of `shape` padded up to whole cells: the extent of its output grid."""
    return -(-shape[0] // CELL) * CELL, -(-shape[1] // CELL) * CELL


class ChunkBox(NamedTuple):
    """A chunk's output box in processing px: top-left corner (x, y) and size (w, h)."""

    x: int
    y: int
    w: int
    h: int


class Window(NamedTuple):
    """A box of a stored map in map px, rows before columns, ends exclusive: [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int


class Tile(NamedTuple):
    """One model pass's output inside the predicted image, in output px: top-left (y, x) and size (h, w)."""

    y: int
    x: int
    h: int
    w: int
