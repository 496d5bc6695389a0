"""The output grid every stage shares.

Outputs are laid on cells of CELL processing pixels starting at the slide's
processing-resolution pixel (0, 0) — the reference's patch output grid. A model
sees CONTEXT extra input pixels on every side of the output it predicts
(448-px patches keep their centre 144 px: (448 - 144) / 2 = 152).

Boxes come in three orders, one type each. They are NamedTuples, so they unpack
and index like plain tuples, and a plain 4-tuple in the same order serves too.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

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


def pass_size(mode: str, tile: int) -> int:
    """Output px per side of a Cerberus forward pass: `tile`, or one cell in patch mode (the reference's
    448-px patches are a cell plus context)."""
    return CELL if mode == "patch" else tile


def chunk_tissue(rows: int, cols: int, empty_cells: Iterable[tuple[int, int]]) -> np.ndarray:
    """Bool (rows, cols): True but at the (row, col) of `empty_cells`."""
    cells = np.ones((rows, cols), bool)
    for row, col in empty_cells:
        cells[row, col] = False
    return cells


def tissue_tiles(tissue: Sequence[Sequence[bool]], tile: int) -> list[Tile]:
    """The forward passes over a grid of cells (True: tissue): tiles of `tile` px from cell (0, 0), each
    shrunk to the bounding box of its tissue cells; a tile without tissue is left out.

    The rule sees only the tile and its cells, so where chunks are whole tiles on a slide-wide grid
    every chunk size cuts the same passes, and the maps agree bit for bit.
    """
    cells = np.asarray(tissue, dtype=bool)
    side = tile // CELL
    tiles = []
    for top in range(0, cells.shape[0], side):
        for left in range(0, cells.shape[1], side):
            rows, cols = np.nonzero(cells[top : top + side, left : left + side])
            if rows.size:
                y, x = (top + rows.min()) * CELL, (left + cols.min()) * CELL
                tiles.append(Tile(int(y), int(x), int(rows.max() - rows.min() + 1) * CELL, int(cols.max() - cols.min() + 1) * CELL))
    return tiles


def tissue_runs(tissue: Sequence[Sequence[bool]]) -> list[Tile]:
    """The tissue cells of a grid as few output boxes: each row's runs of tissue cells, a run joined with
    the one below it where both span the same columns."""
    cells = np.asarray(tissue, dtype=bool)
    runs: list[Tile] = []
    open_runs: dict[tuple[int, int], int] = {}  # (x, w) of a run on the row above -> its index in `runs`
    for row in range(cells.shape[0]):
        padded = np.concatenate([[False], cells[row], [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        spans = [(int(start) * CELL, int(stop - start) * CELL) for start, stop in zip(edges[::2], edges[1::2])]
        below = {}
        for x, w in spans:
            if (x, w) in open_runs:
                index = open_runs[(x, w)]
                runs[index] = runs[index]._replace(h=runs[index].h + CELL)
            else:
                index = len(runs)
                runs.append(Tile(row * CELL, x, CELL, w))
            below[(x, w)] = index
        open_runs = below
    return runs


def input_boxes(tiles: Iterable[Tile], reach: int) -> list[Tile]:
    """The input px (output plus CONTEXT on every side) that outputs `tiles` depend on, for a model whose
    output px depend on input px at most `reach` px away (reach <= CONTEXT)."""
    return [Tile(t.y + CONTEXT - reach, t.x + CONTEXT - reach, t.h + 2 * reach, t.w + 2 * reach) for t in tiles]
