"""Chunk plans: which square chunks of output cells to run the model on, and which cells inside them hold tissue.

Cells are CELL processing px from pixel (0, 0), ceil(w/CELL) x ceil(h/CELL) of
them, so the last ones overhang the slide like the reference grid. Chunks are
k x k cells; edge chunks are clipped to the cell grid. A cell holds tissue when
any mask pixel touching any part of it is tissue, so no tissue pixel is ever
left outside the plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.slides.mask import TissueMask
from cerberus_batch.slides.transform import Transform
from cerberus_batch.slides.view import SlideView

DEFAULT_CHUNK = 2016  # 14 cells
EDGE_ROUNDING = 1e-6  # mask-pixel positions this close to an integer are treated as exact


@dataclass
class Chunk:
    index: int  # position in ChunkPlan.chunks
    row: int  # position in the chunk grid
    col: int
    x: int  # processing px; w and h are multiples of CELL
    y: int
    w: int
    h: int
    empty_cells: list[tuple[int, int]] = field(default_factory=list)  # (row, col) within the chunk, without tissue


@dataclass
class ChunkPlan:
    slide_id: str
    shape: tuple[int, int]  # (h, w) processing px
    cell: int
    chunk: int
    chunks: list[Chunk]  # kept chunks, raster order
    grid: tuple[int, int]  # (rows, cols) of all chunks, kept or not
    cells: int  # cells with tissue
    tissue_mm2: float
    mpp: float  # true µm per processing px
    transform: Transform  # processing px -> level-0 px
    mask_source: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["transform"] = self.transform.to_dict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ChunkPlan:
        data = json.loads(text)
        chunks = [Chunk(**{**c, "empty_cells": [tuple(rc) for rc in c["empty_cells"]]}) for c in data.pop("chunks")]
        return cls(
            **{
                **data,
                "shape": tuple(data["shape"]),
                "grid": tuple(data["grid"]),
                "chunks": chunks,
                "transform": Transform.from_dict(data["transform"]),
            }
        )

    def summary(self) -> dict[str, object]:
        """Tissue area, kept chunks and cells, and the work they imply in megapixels."""
        cell_rows, cell_cols = (math.ceil(n / self.cell) for n in self.shape)
        return {
            "slide_id": self.slide_id,
            "shape": self.shape,
            "mpp": self.mpp,
            "tissue_mm2": round(self.tissue_mm2, 3),
            "chunk": self.chunk,
            "chunks_kept": len(self.chunks),
            "chunks_total": self.grid[0] * self.grid[1],
            "cells": self.cells,
            "cells_total": cell_rows * cell_cols,
            "output_megapixels": self.cells * self.cell**2 / 1e6,
            # Estimated work: what the model reads, every kept chunk with its context border.
            "work_megapixels": sum((c.w + 2 * CONTEXT) * (c.h + 2 * CONTEXT) for c in self.chunks) / 1e6,
        }


def plan_chunks(view: SlideView, mask: TissueMask, chunk: int = DEFAULT_CHUNK, slide_id: str = "") -> ChunkPlan:
    """The deterministic chunk plan of a slide at its processing resolution."""
    if chunk <= 0 or chunk % CELL:
        raise ValueError(f"chunk: {chunk} is not a positive multiple of the {CELL}-px cell")
    h, w = view.shape
    tissue = cells_with_tissue(mask, (math.ceil(h / CELL), math.ceil(w / CELL)))
    k = chunk // CELL
    grid = (math.ceil(tissue.shape[0] / k), math.ceil(tissue.shape[1] / k))
    chunks: list[Chunk] = []
    for row in range(grid[0]):
        for col in range(grid[1]):
            cells = tissue[row * k : (row + 1) * k, col * k : (col + 1) * k]
            if cells.any():
                empty = [(int(r), int(c)) for r, c in np.argwhere(~cells)]
                chunks.append(
                    Chunk(len(chunks), row, col, col * chunk, row * chunk, cells.shape[1] * CELL, cells.shape[0] * CELL, empty)
                )
    mpp_x, mpp_y = view.mpp_xy
    pixel_um2 = mask.downsample_x * mpp_x * mask.downsample * mpp_y
    return ChunkPlan(
        slide_id=slide_id,
        shape=(h, w),
        cell=CELL,
        chunk=chunk,
        chunks=chunks,
        grid=grid,
        cells=int(tissue.sum()),
        tissue_mm2=float(mask.array.sum() * pixel_um2 / 1e6),
        mpp=view.mpp,
        transform=view.transform,
        mask_source=mask.source,
    )


def cells_with_tissue(mask: TissueMask, cells: tuple[int, int]) -> np.ndarray:
    """Bool (rows, cols): cells that any tissue mask pixel touches."""
    rows = _any_per_cell(mask.array, cells[0], mask.downsample, axis=0)
    return _any_per_cell(rows, cells[1], mask.downsample_x, axis=1)


def _any_per_cell(array: np.ndarray, n_cells: int, downsample: float, axis: int) -> np.ndarray:
    """Collapse `axis` from mask pixels to cells: a cell is True if any overlapping mask pixel is."""
    n_pixels = array.shape[axis]
    out_shape = list(array.shape)
    out_shape[axis] = n_cells
    out = np.zeros(out_shape, bool)
    for cell in range(n_cells):
        # Mask px j overlaps the cell iff j < end and j + 1 > start (in mask px).
        start, end = (_snap(cell * CELL / downsample), _snap((cell + 1) * CELL / downsample))
        lo, hi = min(math.floor(start), n_pixels), min(math.ceil(end), n_pixels)
        if lo < hi:
            index = [slice(None)] * array.ndim
            index[axis] = slice(lo, hi)
            target = [slice(None)] * array.ndim
            target[axis] = cell
            out[tuple(target)] = array[tuple(index)].any(axis=axis)
    return out


def _snap(position: float) -> float:
    nearest = round(position)
    return float(nearest) if abs(position - nearest) < EDGE_ROUNDING else position
