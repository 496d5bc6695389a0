"""Reading a slide on a pixel grid of any resolution (the processing resolution, a mask grid).

A grid is a `Transform` from grid px to level-0 px. Regions are read from the
coarsest pyramid level that is still at least as fine as the grid, then
area-averaged: exact box means when the grid is an integer multiple of the
level, Gaussian anti-aliasing plus bilinear sampling otherwise. Both depend only
on pixels near each output pixel, so separately read chunks agree at their seams.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter1d

from cerberus_batch.slides.errors import SlideError
from cerberus_batch.slides.transform import Transform

if TYPE_CHECKING:
    from cerberus_batch.slides.slide import Slide

NATIVE_TOLERANCE = 0.02  # a level this close to the target is read as is
EXACT = 1e-9  # how close a level factor or offset must be to an integer for the box-mean path


class SlideView:
    """The slide on a grid of processing pixels; `read` returns RGB in those pixels."""

    def __init__(self, slide: Slide, transform: Transform, shape: tuple[int, int], target_mpp: float) -> None:
        if slide.info.mpp is None:
            raise SlideError(slide.info.path, _NO_MPP)
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


_NO_MPP = "has no microns-per-pixel metadata; set `mpp:` for this slide in the cohort file (or pass --mpp-override)"


def view_at_mpp(slide: Slide, mpp: float) -> SlideView:
    """The processing grid: a level within 2% of `mpp` read natively, else level 0 resampled."""
    if slide.info.mpp is None:
        raise SlideError(slide.info.path, _NO_MPP)
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
    cols, rows = _Sampling(x, w, fx, ox), _Sampling(y, h, fy, oy)
    region = slide.read_level(level, cols.start, rows.start, cols.size, rows.size).astype(np.float32)
    region = rows.apply(region, axis=0)
    region = cols.apply(region, axis=1)
    return np.clip(np.rint(region), 0, 255).astype(np.uint8)


def _box_mean(region: np.ndarray, kx: int, ky: int) -> np.ndarray:
    if kx == ky == 1:
        return region
    h, w = region.shape[0] // ky, region.shape[1] // kx
    sums = region.reshape(h, ky, w, kx, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = kx * ky
    return ((sums + n // 2) // n).astype(np.uint8)


class _Sampling:
    """Anti-aliased bilinear sampling of grid px start..start+n along one axis of a level."""

    def __init__(self, start: int, n: int, factor: float, origin: float) -> None:
        # Level coordinates (pixel centres at integers) of the grid pixel centres.
        centres = (np.arange(start, start + n) + 0.5) * factor + origin - 0.5
        self.sigma = max(0.0, (factor - 1) / 2)  # scikit-image's anti-aliasing choice
        margin = math.ceil(4 * self.sigma) + 1
        self.start = math.floor(centres[0]) - margin
        self.size = math.floor(centres[-1]) + 2 + margin - self.start
        position = centres - self.start
        self.index = np.floor(position).astype(np.intp)
        self.weight = (position - self.index).astype(np.float32)

    def apply(self, region: np.ndarray, axis: int) -> np.ndarray:
        if self.sigma > 0:
            region = gaussian_filter1d(region, self.sigma, axis=axis, mode="nearest")
        shape = [1, 1, 1]
        shape[axis] = -1
        weight = self.weight.reshape(shape)
        low = np.take(region, self.index, axis=axis)
        high = np.take(region, self.index + 1, axis=axis)
        return low * (1 - weight) + high * weight
