"""Large slides of real H&E for benchmarks: one small slide mirrored into an n × m mosaic.

Copy (column j, row i) of the source's level 0 is flipped left-right when j is odd and
upside-down when i is odd, so every seam joins a copy to its own mirror image and the tissue
runs on across it (no cut nuclei, no glass edges inside the mosaic). The result is an
Aperio-style SVS — tiled baseline, thumbnail, tiled ÷4 and ÷16 levels, the source's µm/px in
the description — that tiffslide and `cerberus_batch.slides.open_slide` read like a scan.

Tiles are computed from the source one at a time and handed to tifffile as a generator, so
memory holds the source level 0 (about 20 MB for CMU-1-Small-Region) and a few tiles, never
the mosaic: the process's memory does not grow with the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cerberus_batch.defaults import PROCESSING_MPP  # where the source's tissue is measured
from cerberus_batch.errors import SlideError
from cerberus_batch.testing.svs import THUMBNAIL_SIZE, TILE, Encoding, write_svs

DOWNSAMPLES = (4, 16)  # reduced levels; ÷16 serves the ~8 µm/px tissue mask at 0.5 µm/px
STRIP = 16  # output rows of a reduced-level tile averaged at once (bounds the level-0 block read)


@dataclass(frozen=True)
class Mosaic:
    path: Path
    grid: tuple[int, int]  # (columns, rows) of source copies
    size: tuple[int, int]  # level-0 (w, h) px
    mpp: float  # level-0 µm/px, the source's
    copy_tissue_mm2: float  # the auto tissue mask's area in one copy of the source


def write_mosaic(
    path: str | Path,
    source: str | Path,
    grid: tuple[int, int] | None = None,
    *,
    tissue_mm2: float | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
) -> Mosaic:
    """Write `source`'s level 0 mirrored into a mosaic at `path` (SVS layout).

    Give the mosaic's `grid` as (columns, rows) of copies, or a `tissue_mm2` to aim for: the
    nearest-to-square grid with ceil(tissue_mm2 / one copy's tissue) copies, one copy's tissue
    being the area the pipeline's automatic mask finds on the source at PROCESSING_MPP. (Seams join
    tissue with its mirror image, so the mosaic's own mask area is close to, not exactly, copies
    × that.) `compression` is any tifffile codec name, or None for uncompressed (bit-exact) tiles.
    """
    from cerberus_batch.slides import open_slide
    from cerberus_batch.slides.mask import tissue_mask

    if (grid is None) == (tissue_mm2 is None):
        raise ValueError("give exactly one of grid or tissue_mm2")
    with open_slide(source) as slide:
        if slide.info.mpp is None:
            raise SlideError(source, "the source slide has no µm/px in its metadata")
        mpp = float(slide.info.mpp[0])
        w, h = slide.info.dimensions
        image = slide.read_level(0, 0, 0, w, h)
        copy_tissue = tissue_mask(slide.at_mpp(PROCESSING_MPP)).tissue_fraction * w * h * mpp * mpp / 1e6
        power = slide.info.objective_power
    if grid is None:
        grid = _grid_for(math.ceil(tissue_mm2 / copy_tissue), w, h) if copy_tissue > 0 else (1, 1)
    columns, rows = grid
    if columns < 1 or rows < 1:
        raise ValueError(f"grid must be at least 1 × 1, got {grid}")
    size = (columns * w, rows * h)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_svs(Path(path), image, size, mpp, power, compression, quality)
    return Mosaic(Path(path), (columns, rows), size, mpp, copy_tissue)


def _grid_for(copies: int, w: int, h: int) -> tuple[int, int]:
    """(columns, rows) with at least `copies` copies whose mosaic is closest to square."""
    rows = max(1, round(math.sqrt(copies * w / h)))
    return math.ceil(copies / rows), rows


def _reflect(coords: np.ndarray, period: int) -> np.ndarray:
    """Source index of mosaic coordinates along one axis: odd copies run backwards."""
    t = coords % (2 * period)
    return np.where(t < period, t, 2 * period - 1 - t)


def _tiles(image: np.ndarray, size: tuple[int, int], factor: int) -> Iterator[np.ndarray]:
    """The tiles of the ÷`factor` level in tifffile's order (row by row), white beyond its edge.

    A reduced-level pixel is the rounded mean of its factor × factor level-0 block.
    """
    h, w = image.shape[:2]
    level_w, level_h = size[0] // factor, size[1] // factor
    for ty in range(0, level_h, TILE):
        for tx in range(0, level_w, TILE):
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            tw, th = min(TILE, level_w - tx), min(TILE, level_h - ty)
            cols = _reflect(np.arange(tx * factor, (tx + tw) * factor), w)
            for sy in range(0, th, STRIP if factor > 1 else TILE):
                sh = min(STRIP if factor > 1 else TILE, th - sy)
                rows = _reflect(np.arange((ty + sy) * factor, (ty + sy + sh) * factor), h)
                block = image[np.ix_(rows, cols)]
                if factor > 1:
                    sums = block.reshape(sh, factor, tw, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
                    block = ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)
                tile[sy : sy + sh, :tw] = block
            yield tile


def _thumbnail(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-pixel thumbnail whose longer side is at most THUMBNAIL_SIZE (small: held whole)."""
    h, w = image.shape[:2]
    step = math.ceil(max(size) / THUMBNAIL_SIZE)
    rows = _reflect(np.arange(step // 2, size[1], step), h)
    cols = _reflect(np.arange(step // 2, size[0], step), w)
    return image[np.ix_(rows, cols)]


def _write_svs(
    path: Path, image: np.ndarray, size: tuple[int, int], mpp: float, power: float | None,
    compression: str | None, quality: int,
) -> None:
    """The mosaic's levels, tile by tile, in the SVS layout."""
    w, h = size
    levels = [(_tiles(image, size, 1), size)]
    levels += [(_tiles(image, size, f), (w // f, h // f)) for f in DOWNSAMPLES if min(w // f, h // f) >= 1]
    # bigtiff: a lossless 80 mm² mosaic passes the 4 GB of classic TIFF offsets.
    write_svs(path, levels, _thumbnail(image, size), mpp, {"AppMag": f"{power or 20:g}", "ScanScope ID": "MOSAIC"},
              Encoding(compression, quality, quality, bigtiff=True))
