"""Chunk plans: which square chunks of output cells to run the model on, and which cells inside them hold tissue.

Cells are CELL processing px from pixel (0, 0), ceil(w/CELL) x ceil(h/CELL) of
them, so the last ones overhang the slide like the reference grid. Chunks are
k x k cells; edge chunks are clipped to the cell grid. A cell holds tissue when
any mask pixel touching any part of it is tissue, so no tissue pixel is ever
left outside the plan.

The slide's tissue area is the tissue mask's area on the slide: each tissue mask
pixel counts the processing px it covers inside the slide's extent (the last mask
pixels, like the last cells, may overhang it). The plan keeps it per cell, so the
area can be split by the tissue type the model gives each cell.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cerberus_batch.defaults import CHUNK
from cerberus_batch.errors import SettingError, SlideError
from cerberus_batch.grid import CELL, CONTEXT, ChunkBox, Tile, chunk_tissue, tissue_tiles
from cerberus_batch.slides.mask import TissueMask
from cerberus_batch.slides.transform import Transform
from cerberus_batch.slides.view import SlideView

EDGE_ROUNDING = 1e-6  # mask-pixel positions this close to an integer are treated as exact
# The longest glass slides (whole-mount, 3 in) are 76 mm: a slide longer than this has a wrong mpp. With
# processing at 0.05 µm/px or coarser (`config.microscope_mpp`), it also keeps a slide within 1.6 M px a side.
LONGEST_SLIDE_MM = 80


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
    tissue_px: list[float] = field(default_factory=list)  # per cell, row-major: processing px² of tissue on the slide

    @property
    def box(self) -> ChunkBox:
        return ChunkBox(self.x, self.y, self.w, self.h)


@dataclass
class ChunkPlan:
    slide_id: str
    shape: tuple[int, int]  # (h, w) processing px
    cell: int
    chunk: int
    chunks: list[Chunk]  # kept chunks, raster order
    grid: tuple[int, int]  # (rows, cols) of all chunks, kept or not
    cells: int  # cells with tissue
    tissue_mm2: float  # the tissue mask's area on the slide
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

    @property
    def tissue_mpx(self) -> float:
        """Processing megapixels of the cells holding tissue: what the model infers, the unit of a run's costs."""
        return self.cells * self.cell**2 / 1e6

    def tissue_cells(self) -> np.ndarray:
        """Float (rows, cols): processing px² of tissue in each cell of the slide's grid."""
        h, w = self.shape
        cells = np.zeros((math.ceil(h / self.cell), math.ceil(w / self.cell)))
        for c in self.chunks:
            rows, cols = c.h // self.cell, c.w // self.cell
            top, left = c.y // self.cell, c.x // self.cell
            cells[top : top + rows, left : left + cols] = np.reshape(c.tissue_px, (rows, cols))
        return cells

    def input_px(self, tile: int | None) -> int:
        """Input px the model reads: passes of `tile` px shrunk to their tissue cells
        (`grid.tissue_tiles`) plus context, or with None (a model that takes whole chunks) every
        kept chunk plus context."""
        read = 0
        for c in self.chunks:
            cells = chunk_tissue(c.h // self.cell, c.w // self.cell, c.empty_cells)
            passes = tissue_tiles(cells, tile) if tile else [Tile(0, 0, c.h, c.w)]
            read += sum((t.h + 2 * CONTEXT) * (t.w + 2 * CONTEXT) for t in passes)
        return read

    def input_per_tissue_px(self, tile: int | None) -> float:
        """`input_px` per output px of tissue cells."""
        return self.input_px(tile) / (self.cells * self.cell**2) if self.cells else 0.0

    def summary(self) -> dict[str, object]:
        """Tissue area, kept chunks and cells, and their output megapixels."""
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
        }


def check_extent(view: SlideView) -> None:
    """Refuse, in one line, a slide whose size says its mpp is wrong: less than a pixel at the
    processing resolution (nothing to read), or longer than any glass slide (more pixels than to plan)."""
    info = view.slide.info
    (width, height), (mpp_x, mpp_y) = info.dimensions, info.mpp
    stated = f"{width}×{height} px at {mpp_x:g} µm/px ({info.mpp_source})"
    h, w = view.shape
    if min(h, w) < 1:
        raise SlideError(info.path, f"{stated} are {w}×{h} px at {view.mpp:g} µm/px: less than one processing px; check its mpp")
    mm = (width * mpp_x / 1000, height * mpp_y / 1000)
    if max(mm) > LONGEST_SLIDE_MM:
        raise SlideError(info.path, f"{stated} are {mm[0]:g} × {mm[1]:g} mm: longer than any glass slide ({LONGEST_SLIDE_MM} mm); check its mpp")


def plan_chunks(view: SlideView, mask: TissueMask, chunk: int = CHUNK, slide_id: str = "") -> ChunkPlan:
    """The deterministic chunk plan of a slide at its processing resolution."""
    if chunk <= 0 or chunk % CELL:
        raise SettingError(f"chunk: {chunk} is not a positive multiple of the {CELL}-px cell")
    h, w = view.shape
    tissue_px = cell_tissue(mask, (h, w))
    tissue = tissue_px > 0
    k = chunk // CELL
    grid = (math.ceil(tissue.shape[0] / k), math.ceil(tissue.shape[1] / k))
    chunks: list[Chunk] = []
    for row in range(grid[0]):
        for col in range(grid[1]):
            cells = tissue[row * k : (row + 1) * k, col * k : (col + 1) * k]
            if cells.any():
                empty = [(int(r), int(c)) for r, c in np.argwhere(~cells)]
                px = tissue_px[row * k : (row + 1) * k, col * k : (col + 1) * k].ravel().tolist()
                size = (cells.shape[1] * CELL, cells.shape[0] * CELL)
                chunks.append(Chunk(len(chunks), row, col, col * chunk, row * chunk, *size, empty, px))
    mpp_x, mpp_y = view.mpp_xy
    return ChunkPlan(
        slide_id=slide_id,
        shape=(h, w),
        cell=CELL,
        chunk=chunk,
        chunks=chunks,
        grid=grid,
        cells=int(tissue.sum()),
        tissue_mm2=float(tissue_px.sum() * mpp_x * mpp_y / 1e6),
        mpp=view.mpp,
        transform=view.transform,
        mask_source=mask.source,
    )


def cell_tissue(mask: TissueMask, shape: tuple[int, int]) -> np.ndarray:
    """Float (rows, cols): processing px² of tissue mask in each cell of a slide of `shape` (h, w),
    counting only what lies inside the slide. Positive exactly where a tissue mask pixel touches the cell."""
    rows = _per_cell(mask.array, shape[0], mask.downsample, axis=0)
    return _per_cell(rows, shape[1], mask.downsample_x, axis=1)


def _per_cell(array: np.ndarray, extent: int, downsample: float, axis: int) -> np.ndarray:
    """Collapse `axis` from mask pixels to the cells of `extent` processing px: each cell sums the
    mask pixels overlapping it, each weighted by the processing px it shares with the cell there."""
    n_pixels = array.shape[axis]
    n_cells = math.ceil(extent / CELL)
    out = np.zeros((n_cells, array.shape[1 - axis]))
    for cell in range(n_cells):
        # Mask px j overlaps the cell iff j < end and j + 1 > start (in mask px).
        start, end = _snap(cell * CELL / downsample), _snap(min((cell + 1) * CELL, extent) / downsample)
        lo, hi = min(math.floor(start), n_pixels), min(math.ceil(end), n_pixels)
        if lo < hi:
            j = np.arange(lo, hi)
            weight = (np.minimum(end, j + 1) - np.maximum(start, j)) * downsample
            out[cell] = weight @ (array[lo:hi] if axis == 0 else array[:, lo:hi].T)
    return out if axis == 0 else out.T


def _snap(position: float) -> float:
    nearest = round(position)
    return float(nearest) if abs(position - nearest) < EDGE_ROUNDING else position
