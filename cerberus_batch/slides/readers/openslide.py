"""Every format OpenSlide 4 reads (MIRAX, Hamamatsu VMS/VMU, Sakura, Philips, Ventana, ...), from its wheels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from cerberus_batch.errors import SlideError, first_line
from cerberus_batch.slides.location import Location
from cerberus_batch.slides.sources import SourceMetadata, check_plausible, plausible_mpp, to_rgb
from cerberus_batch.slides.truncation import tiff_truncation


class OpenSlideSource:
    reader = "openslide"

    def __init__(self, path: Location) -> None:
        self.path = path
        if path.remote:
            raise SlideError(path, "OpenSlide reads local files only; copy the slide, or read it with reader: tiffslide")
        try:
            self._slide = openslide.OpenSlide(path.local)
        except openslide.OpenSlideError as err:  # a truncated TIFF-based file is said as such, not "unsupported"
            with path.local.open("rb") as file:
                truncated = tiff_truncation(file, path.local.stat().st_size)
            if truncated:
                raise SlideError(path, truncated) from None
            if isinstance(err, openslide.OpenSlideUnsupportedFormatError):
                raise SlideError(path, "unsupported format: not a TIFF, PNG or JPEG, and not a format OpenSlide reads") from None
            raise SlideError(path, f"not a readable slide ({first_line(err, typed=True)})") from None
        level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        try:
            check_plausible(path, level_dimensions, _slide_bytes(path.local))
        except SlideError:
            self._slide.close()
            raise
        properties = self._slide.properties
        mpp = properties.get(openslide.PROPERTY_NAME_MPP_X), properties.get(openslide.PROPERTY_NAME_MPP_Y)
        power = properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self._downsamples = self._slide.level_downsamples
        self.metadata = SourceMetadata(
            level_dimensions=level_dimensions,
            mpp=plausible_mpp((float(mpp[0]), float(mpp[1])) if all(mpp) else None),
            vendor=str(properties.get(openslide.PROPERTY_NAME_VENDOR, "openslide")),
            objective_power=float(power) if power else None,
        )

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        # OpenSlide places a region by its level-0 corner; it divides that by the level's downsample
        # again, so the product lands exactly on (x0, y0) for the integer downsamples pyramids use.
        scale = self._downsamples[level]
        corner = (round(x0 * scale), round(y0 * scale))
        try:
            region = self._slide.read_region(corner, level, (x1 - x0, y1 - y0))
        except openslide.OpenSlideError as err:
            raise SlideError(self.path, f"cannot decode level {level} region ({first_line(err, typed=True)})") from None
        # Unscanned areas come back transparent; to_rgb puts them on white like any slide background.
        return to_rgb(np.asarray(region), self.path)

    def close(self) -> None:
        self._slide.close()


def _slide_bytes(path: Path) -> int:
    """At most the bytes the slide may hold: multi-file formats keep their data beside the index file
    (VMS, VMU: JPEGs in its folder) or in a folder named after it (MIRAX: <stem>/*.dat)."""
    beside = [p for p in path.parent.iterdir() if p.is_file()]
    data = path.parent / path.stem
    inside = [p for p in data.iterdir() if p.is_file()] if data.is_dir() else []
    return sum(p.stat().st_size for p in beside + inside)
