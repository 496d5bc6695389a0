"""Opening a slide: metadata, levels and white-padded level reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cerberus_batch.defaults import PROCESSING_MPP
from cerberus_batch.errors import SlideError
from cerberus_batch.slides.location import Location
from cerberus_batch.slides.sources import PixelSource, Reader, open_source
from cerberus_batch.slides.transform import Transform
from cerberus_batch.slides.view import SlideView, best_level, render_whole, view_at_mpp

NO_MPP_FIX = "pass --mpp-override"  # what the commands that open one slide offer; a cohort names its own


@dataclass(frozen=True)
class SlideInfo:
    path: str
    dimensions: tuple[int, int]  # level-0 (w, h)
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]  # (w, h) per level
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None  # level-0 µm/px (x, y)
    vendor: str
    objective_power: float | None
    mpp_source: str  # "metadata", "override", "fallback" (none in the metadata) or "none"
    reader: str  # tiffslide, openslide, dicom or pillow


class Slide:
    """A whole-slide image (or plain image) of any supported format.

    Its level-0 µm/px: `mpp` (an override) if given, else its metadata's, else `fallback_mpp`; with none,
    reading it at a resolution raises the error that ends with `no_mpp_fix` (what the user can do)."""

    def __init__(
        self, path: Location, source: PixelSource, mpp: float | None = None, *,
        fallback_mpp: float | None = None, no_mpp_fix: str = NO_MPP_FIX,
    ) -> None:
        self._source = source
        meta = source.metadata
        self._scales = tuple(_level_scale(meta.level_dimensions[0], dims) for dims in meta.level_dimensions)
        for given in (mpp, fallback_mpp):
            if given is not None and not given > 0:
                raise SlideError(path, f"mpp must be positive, got {given}")
        self.no_mpp_fix = no_mpp_fix
        if mpp is None and meta.mpp is None and fallback_mpp is not None:
            found, source_of = (fallback_mpp, fallback_mpp), "fallback"
        elif mpp is not None:
            found, source_of = (mpp, mpp), "override"
        else:
            found, source_of = meta.mpp, "metadata" if meta.mpp else "none"
        self.info = SlideInfo(
            path=str(path),
            dimensions=meta.level_dimensions[0],
            level_count=len(meta.level_dimensions),
            level_dimensions=meta.level_dimensions,
            level_downsamples=tuple((sx + sy) / 2 for sx, sy in self._scales),
            mpp=found,
            vendor=meta.vendor,
            objective_power=meta.objective_power,
            mpp_source=source_of,
            reader=source.reader,
        )

    def level_scale(self, level: int) -> tuple[float, float]:
        """Level-0 px per level px (x, y); exact integers when the level is a floor/ceil division."""
        return self._scales[level]

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a level region in level px; outside the slide is white."""
        width, height = self.info.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            return self._source.read(level, x0, y0, x1, y1)  # no white to add: the source's array as is
        if not (x0 < x1 and y0 < y1):
            return np.full((h, w, 3), 255, np.uint8)
        # Only the margins outside the level are painted white: the region is written once.
        out = np.empty((h, w, 3), np.uint8)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = self._source.read(level, x0, y0, x1, y1)
        out[: y0 - y] = 255
        out[y1 - y :] = 255
        out[y0 - y : y1 - y, : x0 - x] = 255
        out[y0 - y : y1 - y, x1 - x :] = 255
        return out

    def at_mpp(self, mpp: float = PROCESSING_MPP) -> SlideView:
        """The slide at the processing resolution (µm/px)."""
        return view_at_mpp(self, mpp)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide as RGB uint8 whose longer side is at most `max_size` px."""
        width, height = self.info.dimensions
        factor = max(width, height) / max_size
        transform = Transform(factor, factor)
        w, h = math.ceil(width / factor), math.ceil(height / factor)
        return render_whole(self, best_level(self, transform), transform, w, h)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_slide(
    path: str | Path | Location, mpp: float | None = None, reader: Reader = "auto", *,
    fallback_mpp: float | None = None, no_mpp_fix: str = NO_MPP_FIX,
) -> Slide:
    """Open a slide (a path, a URL or a Location); `mpp` overrides the level-0 µm/px of its metadata,
    `fallback_mpp` stands in where the metadata has none, `reader` picks who reads it (auto: see
    `sources.open_source`). Raises SlideError."""
    try:
        location = Location.parse(path)
    except ValueError as err:
        raise SlideError(path, str(err)) from None
    return Slide(location, open_source(location, reader), mpp, fallback_mpp=fallback_mpp, no_mpp_fix=no_mpp_fix)


def _level_scale(base: tuple[int, int], dims: tuple[int, int]) -> tuple[float, float]:
    return tuple(_axis_scale(full, size) for full, size in zip(base, dims))  # type: ignore[return-value]


def _axis_scale(full: int, size: int) -> float:
    # Pyramids store floor or ceil of full / k; the true pixel pitch is still exactly k.
    k = round(full / size)
    return float(k) if k >= 1 and size in (full // k, -(-full // k)) else full / size
