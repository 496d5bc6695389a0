"""Reading a slide on a pixel grid of any resolution (the processing resolution, a mask grid).

A grid is a `Transform` from grid px to level-0 px. Regions are read from the
coarsest pyramid level that is still at least as fine as the grid, then
area-averaged: exact box means when the grid is an integer multiple of the
level, Pillow's anti-aliased bilinear filter at the exact sub-pixel box
otherwise. Both depend only on pixels near each output pixel, so separately read
chunks agree at their seams.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cerberus_batch.errors import SlideError
from cerberus_batch.slides.transform import Transform

if TYPE_CHECKING:
    from cerberus_batch.slides.slide import Slide

NATIVE_TOLERANCE = 0.02  # a level this close to the target is read as is
EXACT = 1e-9  # how close a level factor or offset must be to an integer for the box-mean path
STRIP_PIXELS = 32_000_000  # level px read at once by `render_whole`


class SlideView:
    """The slide on a grid of processing pixels; `read` returns RGB in those pixels."""

    def __init__(self, slide: Slide, transform: Transform, shape: tuple[int, int], target_mpp: float) -> None:
        if slide.info.mpp is None:
            raise _no_mpp(slide)
        self.slide = slide
        self.transform = transform
        self.shape = shape  # (h, w) processing px
        self.target_mpp = target_mpp
        self.mpp_xy = (slide.info.mpp[0] * transform.scale_x, slide.info.mpp[1] * transform.scale_y)
        self.level = best_level(slide, transform)
        sx, sy = slide.level_scale(self.level)
        self.native = transform == Transform(sx, sy)

    @property
    def mpp(self) -> float:
        """True µm per processing px (the target, or the native level's own value)."""
        return (self.mpp_xy[0] + self.mpp_xy[1]) / 2

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) in processing px; parts outside the slide are white."""
        return render(self.slide, self.level, self.transform, x, y, w, h)

    def coarsened(self, factor: int) -> SlideView:
        """The same slide on a grid `factor` times coarser, sharing the origin (mask grids)."""
        h, w = self.shape
        shape = (math.ceil(h / factor), math.ceil(w / factor))
        return SlideView(self.slide, self.transform.coarsened(factor), shape, self.target_mpp * factor)


def _no_mpp(slide: Slide) -> SlideError:
    return SlideError(slide.info.path, f"has no microns-per-pixel metadata; {slide.no_mpp_fix}")


def view_at_mpp(slide: Slide, mpp: float) -> SlideView:
    """The processing grid: a level within 2% of `mpp` read natively, else level 0 resampled."""
    if slide.info.mpp is None:
        raise _no_mpp(slide)
    if not mpp > 0:
        raise SlideError(slide.info.path, f"target mpp must be positive, got {mpp}")
    want_x, want_y = mpp / slide.info.mpp[0], mpp / slide.info.mpp[1]
    errors = []
    for level in range(slide.info.level_count):
        sx, sy = slide.level_scale(level)
        errors.append((max(abs(sx / want_x - 1), abs(sy / want_y - 1)), level))
    error, level = min(errors)
    if error <= NATIVE_TOLERANCE:
        w, h = slide.info.level_dimensions[level]
        return SlideView(slide, Transform(*slide.level_scale(level)), (h, w), mpp)
    width, height = slide.info.dimensions
    return SlideView(slide, Transform(want_x, want_y), (round(height / want_y), round(width / want_x)), mpp)


def best_level(slide: Slide, transform: Transform) -> int:
    """The coarsest level at least as fine as the grid (level 0 when the grid is finer still)."""
    fine_enough = [
        level
        for level in range(slide.info.level_count)
        if all(s <= t * (1 + EXACT) for s, t in zip(slide.level_scale(level), (transform.scale_x, transform.scale_y)))
    ]
    return max(fine_enough, key=lambda level: slide.level_scale(level)[0], default=0)


def render(slide: Slide, level: int, transform: Transform, x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB uint8 (h, w, 3) of grid region (x, y, w, h), read from `level`."""
    sx, sy = slide.level_scale(level)
    # Level px per grid px, and the grid origin in level px.
    fx, fy = transform.scale_x / sx, transform.scale_y / sy
    ox, oy = transform.offset_x / sx, transform.offset_y / sy
    if all(abs(v - round(v)) < EXACT for v in (fx, fy, ox, oy)):
        kx, ky = round(fx), round(fy)
        region = slide.read_level(level, x * kx + round(ox), y * ky + round(oy), w * kx, h * ky)
        return _box_mean(region, kx, ky)
    # Level-px box the grid region covers, read with a margin wider than the filter's support.
    left, top = x * fx + ox, y * fy + oy
    margin = math.ceil(max(fx, fy, 1.0)) + 2
    x0, y0 = math.floor(left) - margin, math.floor(top) - margin
    x1, y1 = math.ceil(left + w * fx) + margin, math.ceil(top + h * fy) + margin
    region = Image.fromarray(slide.read_level(level, x0, y0, x1 - x0, y1 - y0))
    box = (left - x0, top - y0, left - x0 + w * fx, top - y0 + h * fy)
    # Pillow widens its bilinear (triangle) filter by the reduction factor: area-weighted, anti-aliased.
    return np.asarray(region.resize((w, h), Image.Resampling.BILINEAR, box=box))


def render_whole(slide: Slide, level: int, transform: Transform, w: int, h: int) -> np.ndarray:
    """All of grid region (0, 0, w, h), read in row strips so big single-level slides fit in memory."""
    sx, sy = slide.level_scale(level)
    level_pixels_per_row = (transform.scale_x / sx) * (transform.scale_y / sy) * w
    rows = max(1, int(STRIP_PIXELS / level_pixels_per_row))
    return np.concatenate([render(slide, level, transform, 0, y, w, min(rows, h - y)) for y in range(0, h, rows)], axis=0)


def _box_mean(region: np.ndarray, kx: int, ky: int) -> np.ndarray:
    if kx == ky == 1:
        return region
    h, w = region.shape[0] // ky, region.shape[1] // kx
    sums = np.zeros((h, w, 3), np.uint32)
    for dy in range(ky):  # strided adds: several times faster than a reshaped sum over two axes
        for dx in range(kx):
            sums += region[dy::ky, dx::kx]
    n = kx * ky
    return ((sums + n // 2) // n).astype(np.uint8)
