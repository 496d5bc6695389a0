"""The Aperio SVS layout the generated slides are written in: tiled baseline, thumbnail, tiled reduced
levels, each page described as a ScanScope describes it (tifffile's SVS series; tiffslide and OpenSlide
read the µm/px and magnification there)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

TILE = 256  # px per tile side, every level
THUMBNAIL_SIZE = 768  # longer side of the thumbnail page

# A level's pixels: the whole array, or its tiles in raster order (never holding the level whole).
Pixels = np.ndarray | Iterator[np.ndarray]


@dataclass(frozen=True)
class Encoding:
    compression: str | None  # any tifffile codec name; None: uncompressed (bit-exact) tiles
    quality: int  # the description's Q=, and the JPEG level of the tiled pages
    thumbnail_quality: int | None  # the thumbnail's JPEG level; None: the codec's default
    bigtiff: bool = False  # past the 4 GB of classic TIFF offsets


def write_svs(
    path: Path, levels: Sequence[tuple[Pixels, tuple[int, int]]], thumbnail: np.ndarray,
    mpp: float, fields: dict[str, object], encoding: Encoding,
) -> None:
    """Write `levels` (pixels and (w, h), level 0 first) and the `thumbnail` page at `path`, whole or not
    at all; `fields` are the scanner's (magnification, ...), before the file name and `mpp`."""
    w, h = levels[0][1]
    codec = (encoding.compression or "none").upper()
    header = f"Aperio Image Library v12.0.15 \r\n{w}x{h} ({TILE}x{TILE}) {codec}/RGB Q={encoding.quality}"
    described = "".join(f"|{name} = {value}" for name, value in {**fields, "Filename": path.stem, "MPP": mpp}.items())
    jpeg = encoding.compression == "jpeg"
    # metadata=None: tifffile's own "shaped" description would hide the SVS layout from readers.
    tiled = {"tile": (TILE, TILE), "photometric": "rgb", "metadata": None, "compression": encoding.compression,
             "compressionargs": {"level": encoding.quality} if jpeg else None}
    thumbnail_args = {"level": encoding.thumbnail_quality} if jpeg and encoding.thumbnail_quality is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(partial, bigtiff=encoding.bigtiff) as tiff:
        for k, (pixels, (level_w, level_h)) in enumerate(levels):
            description = header + described if k == 0 else f"{header} -> {level_w}x{level_h} - {described}"
            shaped = {} if isinstance(pixels, np.ndarray) else {"shape": (level_h, level_w, 3), "dtype": np.uint8}
            tiff.write(pixels, description=description, **shaped, **tiled)
            if k == 0:
                tiff.write(thumbnail, description=f"{header} -> thumbnail{described}", photometric="rgb", metadata=None,
                           compression=encoding.compression, compressionargs=thumbnail_args)
    partial.replace(path)
