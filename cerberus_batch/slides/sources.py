"""Where slide pixels come from: tiffslide for TIFF-based files, Pillow for plain images, and the
readers in `slides.readers` (OpenSlide, DICOM) for the rest.

Every source answers the same two questions — what levels exist and what the
RGB pixels of an in-bounds level region are — so `Slide` never cares which
file format it holds.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import tiffslide
from PIL import Image

from cerberus_batch.errors import SlideError, first_line
from cerberus_batch.slides.location import Location, remote_cause
from cerberus_batch.slides.readers.dicomweb import dicomweb_series
from cerberus_batch.slides.tiles import DamagedTile, TileGrid
from cerberus_batch.slides.truncation import tiff_truncation

PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Resolution tags outside this range are scanner-less defaults (72 dpi = 353 µm/px), not microscopy.
PLAUSIBLE_MPP = (0.05, 20.0)
# A slide file holds at least this many bytes per px its levels declare. JPEG or deflate of blank glass
# still costs about 1 byte per 1000 px; a tenth of that leaves room for formats that store one blank tile
# for all empty regions. A file under it only claims its size (e.g. 200000² px, every tile on one tile).
MIN_BYTES_PER_PIXEL = 1e-4
# µm per unit for OME PhysicalSize*Unit.
OME_UNITS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
# Which reader opens a slide; auto: a folder or DICOMweb series is DICOM, a TIFF tiffslide, other files OpenSlide.
Reader = Literal["auto", "tiffslide", "openslide", "dicom"]
FILE_NOT_FOUND = "file not found"  # a local slide that is not there (open and identity alike)
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order


@dataclass(frozen=True)
class SourceMetadata:
    level_dimensions: tuple[tuple[int, int], ...]  # (w, h) per level
    mpp: tuple[float, float] | None
    vendor: str
    objective_power: float | None


class PixelSource(Protocol):
    reader: str  # which reader made the pixels, recorded with the maps
    metadata: SourceMetadata

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB uint8 (y1 - y0, x1 - x0, 3) of a region that lies inside the level."""
        ...

    def close(self) -> None: ...


def open_source(path: Location, reader: Reader = "auto") -> PixelSource:
    # The other readers load only for the slides they open: wsidicom alone takes a second to import,
    # in every worker process that opens a slide.
    if is_dicom(path, reader):
        from cerberus_batch.slides.readers.dicom import DicomSource

        series = dicomweb_series(path.address) if path.remote else None
        return DicomSource.web(path, series) if series is not None else DicomSource.folder(path)
    if not path.remote and not path.local.is_file():
        raise SlideError(path, FILE_NOT_FOUND)
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES and reader != "openslide":
        return PlainImageSource(path)
    if reader == "tiffslide" or (reader == "auto" and (path.remote or _is_tiff(path.local))):
        return TiffSource(path)
    from cerberus_batch.slides.readers.openslide import OpenSlideSource

    return OpenSlideSource(path)  # asked for, or no TIFF: says "unsupported format" where OpenSlide does not read it either


def is_dicom(path: Location, reader: Reader = "auto") -> bool:
    """Whether `open_source` reads the slide as DICOM: a DICOMweb series URL, a local folder, or forced."""
    if path.remote:
        return reader == "dicom" or dicomweb_series(path.address) is not None
    return reader == "dicom" or (reader == "auto" and path.local.is_dir())


def source_identity(path: Location, reader: Reader = "auto") -> dict[str, Any]:
    """What changes when the slide is replaced: size and mtime of a file, size and ETag of an object, the
    SOP instance UIDs of a DICOM slide. Raises SlideError (one line) where it cannot be read."""
    if is_dicom(path, reader):
        from cerberus_batch.slides.readers.dicom import dicom_identity

        return dicom_identity(path)
    if not path.remote and not path.local.is_file():
        raise SlideError(path, FILE_NOT_FOUND)
    try:
        return path.identity()
    except Exception as err:  # the store's or the network's error
        cause = remote_cause(err) or f"cannot read its size and date ({type(err).__name__})"
    raise SlideError(path, cause)  # outside the handler: an aiohttp error as its context would not pickle to the client


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) in TIFF_MAGIC


def check_plausible(path: Location, level_dimensions: tuple[tuple[int, int], ...], size: int) -> None:
    """Refuse a slide whose `size` bytes are far too few for the pixels its levels declare, before anything reads them."""
    pixels = sum(w * h for w, h in level_dimensions)
    if pixels * MIN_BYTES_PER_PIXEL > size:
        raise SlideError(
            path,
            f"its levels declare {pixels / 1e6:,.0f} Mpx, implausible for its file size ({size:,} bytes, "
            f"under 1 byte per {1 / MIN_BYTES_PER_PIXEL:,.0f} px): a damaged or forged file, not a scan",
        )


def to_rgb(pixels: np.ndarray, path: Location) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA uint8 pixels as RGB, transparency composited on white."""
    if pixels.dtype != np.uint8:
        raise SlideError(path, f"{pixels.dtype} pixels are not supported; convert the image to 8-bit RGB")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    if channels not in (1, 2, 3, 4):
        raise SlideError(path, f"{channels} channels per pixel are not supported; expected grey, RGB or RGBA")
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    if channels in (2, 4):
        alpha = pixels[..., -1:].astype(np.uint32)
        blended = (colour.astype(np.uint32) * alpha + 255 * (255 - alpha) + 127) // 255
        return blended.astype(np.uint8)
    return np.ascontiguousarray(colour)


class TiffSource:
    """SVS, pyramidal TIFF (pages or SubIFDs), OME-TIFF and plain TIFF through tiffslide."""

    reader = "tiffslide"

    def __init__(self, path: Location) -> None:
        self.path = path
        try:
            with _TiffProblems() as problems:
                # A remote slide is read through our block-cached, counted file (see Location.open_bytes).
                self._handle = path.open_bytes() if path.remote else None
                self._size = self._handle.size if self._handle else path.local.stat().st_size
                if self._handle:  # over a URL no OpenSlide follows, so a non-TIFF is named as such (its first block, cached)
                    if self._handle.read(4) not in TIFF_MAGIC:
                        raise _NotTiff
                    self._handle.seek(0)
                self._slide = tiffslide.TiffSlide(self._handle or path.local)
                len(self._slide.ts_tifffile.pages)  # walk every page now, so broken page links surface here
                properties = self._slide.properties
                level0 = self._slide.zarr_group["0"]
        except _NotTiff:
            cause = ("unsupported format: over a URL, slides are read as TIFF (SVS, TIFF, OME-TIFF, NDPI), PNG, JPEG or a "
                     "DICOMweb series; copy other formats to a local folder, where OpenSlide reads them")
        except Exception as err:  # tiffslide/tifffile raise many types for unreadable files
            cause = ((remote_cause(err) if path.remote else None) or self._truncation()
                     or f"not a readable slide ({_scrubbed(err, path)})")
        else:
            cause = None
        if cause:  # raised outside the handler: an aiohttp error as its context would not pickle to the client
            raise SlideError(path, cause)
        if problems.messages:
            # tifffile only logs a damaged page chain and carries on with the pages before it.
            raise SlideError(path, f"file is damaged or truncated ({problems.messages[0]})")
        self._axes = properties["tiffslide.series-axes"]
        if self._axes not in ("YX", "YXS"):
            raise SlideError(path, f"pixel layout {self._axes} is not supported; expected interleaved RGB or grey")
        if level0.dtype != np.uint8:
            raise SlideError(path, f"{level0.dtype} pixels are not supported; convert the slide to 8-bit RGB")
        series = int(properties.get("tiffslide.series-index") or 0)
        self._check_complete(series)
        level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self._grids = [TileGrid.of(self._slide.ts_tifffile.series[series], level) for level in range(len(level_dimensions))]
        check_plausible(path, level_dimensions, self._size)
        tiff = self._slide.ts_tifffile
        vendor = properties.get("tiffslide.vendor") or ("ome" if tiff.is_ome else "generic-tiff")
        power = properties.get("tiffslide.objective-power")
        self.metadata = SourceMetadata(
            level_dimensions=level_dimensions,
            mpp=plausible_mpp(_tiff_mpp(properties, tiff.ome_metadata if tiff.is_ome else None)),
            vendor=str(vendor),
            objective_power=float(power) if power else None,
        )

    def _truncation(self) -> str | None:
        """Why the file could not be opened, where it ends before one of its directories."""
        try:
            if self._handle is not None:
                return tiff_truncation(self._handle, self._size)
            with self.path.local.open("rb") as file:
                return tiff_truncation(file, self.path.local.stat().st_size)
        except Exception:  # noqa: BLE001 - unreadable header: the opening error is the one to say
            return None

    def _check_complete(self, series: int) -> None:
        """Refuse files whose tile data runs past the end of the file (interrupted copies)."""
        size = self._size
        for level in self._slide.ts_tifffile.series[series].levels:
            for page in level.pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
                if ends and max(ends) > size:
                    raise SlideError(self.path, f"file is truncated (image data ends at byte {max(ends)}, file has {size})")

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        grid = self._grids[level]
        try:
            if grid is not None:  # a damaged tile is a DamagedTile; anything else our reader raises is a bug
                pixels = grid.read(x0, y0, x1, y1)
            else:  # tiffslide keeps one zarr group per thread; looking it up per read keeps threaded workers safe
                pixels = np.asarray(self._slide.zarr_group[str(level)][y0:y1, x0:x1])
        except (DamagedTile, OSError) as err:
            raise self._unreadable(level, err) from None
        except Exception as err:  # noqa: BLE001 - through Zarr, a damaged tile surfaces as any codec's error
            if grid is not None and not (self.path.remote and remote_cause(err)):  # a store gone away is not a bug
                raise
            raise self._unreadable(level, err) from None
        return to_rgb(pixels, self.path)

    def _unreadable(self, level: int, err: Exception) -> SlideError:
        cause = remote_cause(err) if self.path.remote else None
        if cause:
            return SlideError(self.path, f"cannot read level {level} region: {cause}")
        return SlideError(self.path, f"cannot decode level {level} region ({_scrubbed(err, self.path)})")

    def close(self) -> None:
        self._slide.close()
        if self._handle is not None:
            self._handle.close()


class _NotTiff(Exception):
    """A remote file that does not start as a TIFF does."""


class PlainImageSource:
    """A PNG or JPEG held in memory as a single-level slide (tile mode's inputs)."""

    reader = "pillow"

    def __init__(self, path: Location) -> None:
        self.path = path
        try:
            with Image.open(path.open_bytes()) as image:
                mode = image.mode
                if mode.startswith("I") or mode == "F":
                    raise SlideError(path, f"{mode} (16/32-bit) images are not supported; convert the image to 8-bit RGB")
                self._rgb = to_rgb(np.asarray(image.convert("RGBA")), path)
        except SlideError:
            raise
        except Exception as err:  # Pillow raises several types for damaged images
            raise SlideError(path, remote_cause(err) if path.remote and remote_cause(err) else f"not a readable image ({first_line(err, typed=True)})") from None
        h, w = self._rgb.shape[:2]
        self.metadata = SourceMetadata(level_dimensions=((w, h),), mpp=None, vendor="image", objective_power=None)

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._rgb[y0:y1, x0:x1].copy()  # a region of its own: the image stays as loaded

    def close(self) -> None:
        self._rgb = np.empty((0, 0, 3), np.uint8)


class _TiffProblems(logging.Handler):
    """Collects the errors tifffile logs (instead of raising) while this thread opens a file.

    The logger is process-wide; other threads opening other slides must not be blamed.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(first_line(Exception(record.getMessage())))

    def __enter__(self) -> _TiffProblems:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)


def _scrubbed(err: BaseException, path: Location) -> str:
    """The error's first line with the slide's full URL (which may hold a signature) as shown."""
    return first_line(err, typed=True).replace(path.address, path.shown)


def _tiff_mpp(properties: dict, ome_xml: str | None) -> tuple[float, float] | None:
    mpp_x, mpp_y = properties.get("tiffslide.mpp-x"), properties.get("tiffslide.mpp-y")
    if mpp_x and mpp_y:
        return float(mpp_x), float(mpp_y)
    return _ome_mpp(ome_xml) if ome_xml else None


def _ome_mpp(ome_xml: str) -> tuple[float, float] | None:
    pixels = next((e for e in ElementTree.fromstring(ome_xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    return tuple(  # type: ignore[return-value]
        float(pixels.attrib[f"PhysicalSize{axis}"]) * OME_UNITS.get(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm"), float("nan"))
        for axis in "XY"
    )


def plausible_mpp(mpp: tuple[float, float] | None) -> tuple[float, float] | None:
    low, high = PLAUSIBLE_MPP
    return mpp if mpp and all(low <= v <= high for v in mpp) else None


