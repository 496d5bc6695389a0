"""Tissue masks: which parts of a slide hold tissue worth running the model on.

A mask is a low-resolution bool array plus how many processing px one mask
pixel spans. It comes from an image file (nonzero = tissue), from automatic
detection on a ~8 µm/px rendering of the slide, or covers everything ("none").
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

from cerberus_batch.errors import SlideError, first_line
from cerberus_batch.slides.location import Location, remote_cause
from cerberus_batch.slides.view import SlideView, render_whole

MASK_MPP = 8.0  # µm per pixel of automatic and "none" masks
ASPECT_TOLERANCE = 0.02
# Automatic detection (see `detect_tissue`).
SATURATION_RANGE = (0.04, 0.10)  # clamp on the Otsu threshold: glass sits near 0.01, faint stroma above 0.1
DARK_VALUE = 0.2  # HSV value below this is black pen, dark glass edge or scanner border
PEN_HUES = (70 / 360, 230 / 360)  # green to blue: marker ink, not H&E (pink to purple)
PEN_SATURATION = 0.25
MIN_TISSUE_UM2 = 5_000  # smaller specks are dust or debris
MAX_HOLE_UM2 = 250_000  # lumens and tears up to 0.25 mm² stay inside the mask
# Level px the automatic mask may read (~1 Gpx, tens of seconds); a slide with no level near MASK_MPP
# would otherwise have all of level 0 read, 40 Gpx for a file that merely claims 200000² px.
AUTO_MASK_READ_PIXELS = 1_000_000_000
# Mask px held at once (64 MB of bools): a plan needs tissue per 144-px cell, and even a whole slide's
# mask this size has many px per cell. Larger PNG masks are reduced while decoded in bands; other
# formats, decoded whole (Pillow holds 1-4 bytes per px), are refused above it.
MASK_PIXELS = 64_000_000
BAND_PIXELS = 4_000_000  # PNG mask px decoded at once
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Per PNG colour type (grey, RGB, palette, grey+alpha, RGBA): samples per px, and how many hold colour.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PNG_COLOUR = {0: 1, 2: 3, 3: 1, 4: 1, 6: 3}
PNG_BYTE_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # an 8-bit colour type with px of this many bytes


@dataclass
class TissueMask:
    """Bool tissue array; mask px (i, j) spans processing px [j*dx, (j+1)*dx) x [i*dy, (i+1)*dy)."""

    array: np.ndarray
    downsample: float  # processing px per mask px along y (and x unless `downsample_x` is set)
    source: str  # "auto", "none" or the mask file path
    downsample_x: float | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=bool)
        if self.downsample_x is None:
            self.downsample_x = self.downsample

    @property
    def tissue_fraction(self) -> float:
        return float(self.array.mean()) if self.array.size else 0.0

    def save_png(self, path: str | Path) -> None:
        """Tissue white on black, one pixel per mask pixel (for QC)."""
        Image.fromarray(self.array.astype(np.uint8) * 255).save(path, format="PNG")  # any name: atomic writes use *.part


def tissue_mask(view: SlideView, source: str | Path | Location = "auto", *, slide_path: str | Location | None = None) -> TissueMask:
    """The tissue mask of a slide: "auto", "none" or a mask image (path, URL or Location). Raises SlideError."""
    slide_path = slide_path or view.slide.info.path
    factor = max(1, round(MASK_MPP / view.mpp))
    if source == "auto":
        low = view.coarsened(factor)
        w, h = view.slide.info.level_dimensions[low.level]
        if w * h > AUTO_MASK_READ_PIXELS:
            raise SlideError(
                slide_path,
                f"its automatic mask would read all {w}x{h} px of level {low.level}, having no coarser level "
                f"(over {AUTO_MASK_READ_PIXELS / 1e9:g} Gpx); give it a mask file, `tissue_mask: none`, or a pyramid",
            )
        rgb = render_whole(low.slide, low.level, low.transform, low.shape[1], low.shape[0])
        return TissueMask(detect_tissue(rgb, low.mpp), factor, "auto")
    if source == "none":
        h, w = view.shape
        return TissueMask(np.ones((math.ceil(h / factor), math.ceil(w / factor)), bool), factor, "none")
    return _mask_from_file(Location.parse(source), view, slide_path)


def detect_tissue(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Stained tissue in a low-resolution RGB image (µm/px = `mpp`).

    Glass is bright and unsaturated, H&E is saturated pink to purple, so tissue is
    saturation above an Otsu threshold (clamped to a sane range for all-tissue or
    all-glass images), minus near-black pixels and green/blue marker ink. Specks
    are removed and holes up to 0.25 mm² filled; a one-pixel dilation keeps tissue
    edges, whose low-resolution pixels are part glass, inside the mask.
    """
    hsv = rgb2hsv(rgb)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    usable = value >= DARK_VALUE
    pen = (hue >= PEN_HUES[0]) & (hue <= PEN_HUES[1]) & (saturation >= PEN_SATURATION)
    candidates = saturation[usable & ~pen]
    varied = candidates.size > 0 and candidates.min() < candidates.max()
    otsu = threshold_otsu(candidates) if varied else SATURATION_RANGE[1]
    tissue = usable & ~pen & (saturation > np.clip(otsu, *SATURATION_RANGE))
    tissue = remove_small_objects(tissue, max_size=math.ceil(MIN_TISSUE_UM2 / mpp**2))
    tissue = _fill_holes(tissue, max_size=math.ceil(MAX_HOLE_UM2 / mpp**2))
    return ndimage.binary_dilation(tissue, structure=np.ones((3, 3), bool))


def _fill_holes(tissue: np.ndarray, max_size: int) -> np.ndarray:
    """Fill enclosed glass up to `max_size` px; glass reaching the image border is never a hole."""
    background, _ = ndimage.label(~tissue)
    small = np.bincount(background.ravel()) <= max_size
    small[0] = False
    small[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = False
    return tissue | small[background]


def _mask_from_file(path: Location, view: SlideView, slide_path: str | Location) -> TissueMask:
    try:
        found = path.exists()
    except Exception as err:  # a remote mask: the store's or the network's error
        raise SlideError(path, f"{remote_cause(err) or first_line(err, typed=True)} (mask of slide {slide_path})") from None
    if not found:
        raise SlideError(path, f"mask file not found (for slide {slide_path})")
    try:
        png = _png_header(path)
        mask_w, mask_h = (png.width, png.height) if png else _image_size(path)
        _check_size(path, (mask_w, mask_h), view, slide_path)
        k = _reduction(mask_w, mask_h)
        array = _png_tissue(png, k) if png else _whole_tissue(path)
    except SlideError:
        raise
    except Exception as err:  # Pillow and zlib raise several types for damaged images
        raise SlideError(path, f"not a readable mask image ({type(err).__name__})") from None
    h, w = view.shape
    return TissueMask(array, h / mask_h * k, str(path), downsample_x=w / mask_w * k)


def _check_size(path: Location, size: tuple[int, int], view: SlideView, slide_path: str | Path) -> None:
    """Refuse, before decoding, a mask of the wrong shape or finer than both the slide and the processing grid."""
    mask_w, mask_h = size
    h, w = view.shape
    mismatch = abs((mask_w / mask_h) / (w / h) - 1)
    if mismatch > ASPECT_TOLERANCE:
        raise SlideError(
            path,
            f"mask aspect ratio {mask_w}x{mask_h} differs by {mismatch:.1%} (> 2%) from slide {slide_path} ({w}x{h} processing px)",
        )
    # Pixels finer than any the slide has say nothing more, and a tiny PNG can claim billions of them.
    finest_w, finest_h = (max(a, b) for a, b in zip(view.slide.info.dimensions, (w, h)))
    if max(mask_w / finest_w, mask_h / finest_h) > 1 + ASPECT_TOLERANCE:
        raise SlideError(
            path,
            f"mask is {mask_w}x{mask_h} px, finer than slide {slide_path} ({finest_w}x{finest_h} px at most); "
            "save it at most at the slide's size",
        )


def _reduction(w: int, h: int) -> int:
    """The smallest integer factor that brings a w x h mask within MASK_PIXELS."""
    k = max(1, math.isqrt(w * h // MASK_PIXELS))
    while math.ceil(w / k) * math.ceil(h / k) > MASK_PIXELS:
        k += 1
    return k


def _any_blocks(tissue: np.ndarray, k: int) -> np.ndarray:
    """Tissue reduced k x k: a reduced px is tissue when any px in its block is (edge blocks may be partial)."""
    if k == 1:
        return tissue
    h, w = tissue.shape
    rows = np.zeros((math.ceil(h / k), w), bool)
    for i in range(k):  # strided ors: many times faster than `any` over a reshaped block axis
        rows[: math.ceil((h - i) / k)] |= tissue[i::k]
    blocks = np.zeros((rows.shape[0], math.ceil(w / k)), bool)
    for j in range(k):
        blocks[:, : math.ceil((w - j) / k)] |= rows[:, j::k]
    return blocks


def _image_size(path: Location) -> tuple[int, int]:
    """Size of a mask that is decoded whole, refused above MASK_PIXELS before decoding."""
    too_big = SlideError(
        path,
        f"mask is over {MASK_PIXELS / 1e6:g} Mpx and not a non-interlaced PNG (the kind decoded in bands); "
        "save it as one, or smaller",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget, below, is lower
            with path.open_bytes() as f, Image.open(f) as image:
                size = image.size
    except Image.DecompressionBombError:
        raise too_big from None
    if size[0] * size[1] > MASK_PIXELS:
        raise too_big
    return size


def _whole_tissue(path: Location) -> np.ndarray:
    """Nonzero colour, alpha ignored, of a mask decoded whole by Pillow (it fits MASK_PIXELS)."""
    with path.open_bytes() as f, Image.open(f) as image:
        pixels = np.asarray(image.convert("RGBA") if image.mode == "P" else image)
        has_alpha = image.mode in ("RGBA", "LA", "P", "PA")
    if pixels.ndim == 3:
        # Transparency says nothing about tissue; any nonzero colour channel does.
        pixels = pixels[..., :-1] if has_alpha else pixels
        pixels = pixels.any(axis=2)
    return pixels != 0


@dataclass(frozen=True)
class _PngHeader:
    path: Location
    width: int
    height: int
    depth: int  # bits per sample
    colour_type: int
    palette_tissue: np.ndarray | None  # per palette index: is its colour nonzero
    data_offset: int  # of the first IDAT chunk in the file

    @property
    def row_bytes(self) -> int:
        return math.ceil(self.width * PNG_CHANNELS[self.colour_type] * self.depth / 8)

    @property
    def pixel_bytes(self) -> int:
        """The byte distance PNG's filters look back over."""
        return max(1, PNG_CHANNELS[self.colour_type] * self.depth // 8)


def _png_header(path: Location) -> _PngHeader | None:
    """The header of a PNG that can be decoded in bands: not interlaced, at most 4 bytes per px. Else None."""
    with path.open_bytes() as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        kind, data = _png_chunk(f)
        if kind != b"IHDR":
            raise ValueError("PNG without a header")
        width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data)
        palette_tissue = None
        while kind != b"IDAT":
            start = f.tell()
            kind, data = _png_chunk(f)
            if kind == b"PLTE":
                palette_tissue = np.zeros(256, bool)  # indices past the palette are black, as in Pillow
                colours = np.frombuffer(data, np.uint8).reshape(-1, 3)
                palette_tissue[: len(colours)] = colours.any(axis=1)
    header = _PngHeader(path, width, height, depth, colour_type, palette_tissue, start)
    return header if not interlace and header.pixel_bytes in PNG_BYTE_TYPES else None


def _png_chunk(f: BinaryIO) -> tuple[bytes, bytes]:
    """The next chunk's type and data; an IDAT chunk's data is left unread."""
    length, kind = struct.unpack(">I4s", f.read(8))
    if kind == b"IDAT":
        return kind, b""
    data = f.read(length)
    f.seek(4, io.SEEK_CUR)  # CRC
    return kind, data


def _png_tissue(png: _PngHeader, k: int) -> np.ndarray:
    """Nonzero colour, alpha ignored, reduced k x k, decoding a few rows at a time.

    PNG rows are filtered against the row above, so each band is unfiltered by Pillow as an 8-bit
    PNG of the same bytes per px, led by the previous band's last row, already unfiltered."""
    stride = png.row_bytes + 1  # each row starts with its filter type
    band_rows = k * max(1, BAND_PIXELS // (png.width * k))
    reduced, previous, done = [], None, 0
    for band in _filtered_bands(png, band_rows * stride):
        raw = _unfilter(band, previous, png)
        reduced.append(_any_blocks(_raw_tissue(raw, png), k))
        previous, done = raw[-1].tobytes(), done + len(raw)
    if done < png.height:
        raise SlideError(png.path, f"mask image is truncated ({done} of {png.height} rows)")
    return np.concatenate(reduced)


def _filtered_bands(png: _PngHeader, size: int) -> Iterator[bytes]:
    """The image's filtered rows in pieces of `size` bytes (the last may be shorter), inflated as needed."""
    left = png.height * (png.row_bytes + 1)
    inflate = zlib.decompressobj()
    pending = bytearray()
    with png.path.open_bytes() as f:
        f.seek(png.data_offset)
        for data in _idat_pieces(f, size):
            while left:
                out = inflate.decompress(data, size)  # bounded: a few KB may inflate a thousandfold
                data = inflate.unconsumed_tail
                pending += out
                while left and len(pending) >= min(size, left):
                    piece = bytes(pending[: min(size, left)])
                    del pending[: len(piece)]
                    left -= len(piece)
                    yield piece
                if not data and len(out) < size:  # this input is spent
                    break


def _idat_pieces(f: BinaryIO, size: int) -> Iterator[bytes]:
    """The compressed image data, from the first IDAT chunk on, in pieces of at most `size` bytes."""
    while True:
        length, kind = struct.unpack(">I4s", f.read(8))
        if kind != b"IDAT":
            return
        for start in range(0, length, size):
            yield f.read(min(size, length - start))
        f.seek(4, io.SEEK_CUR)  # CRC


def _unfilter(band: bytes, previous: bytes | None, png: _PngHeader) -> np.ndarray:
    """Unfiltered rows (rows, row_bytes) of `band`, whose first row is filtered against `previous`."""
    lead = b"" if previous is None else b"\0" + previous  # filter type 0: as is
    rows = len(band) // (png.row_bytes + 1) + (previous is not None)
    header = struct.pack(">IIBBBBB", png.row_bytes // png.pixel_bytes, rows, 8, PNG_BYTE_TYPES[png.pixel_bytes], 0, 0, 0)
    stream = b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(lead + band, 0)), _chunk(b"IEND", b"")))
    with Image.open(io.BytesIO(stream)) as image:
        return np.asarray(image).reshape(rows, png.row_bytes)[previous is not None :]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_tissue(raw: np.ndarray, png: _PngHeader) -> np.ndarray:
    """Nonzero colour, alpha ignored, of unfiltered PNG rows: (rows, width) bool."""
    if png.depth < 8:  # grey or palette, several px per byte
        bits = np.unpackbits(raw, axis=1)[:, : png.width * png.depth].reshape(len(raw), png.width, png.depth)
        samples = bits if png.depth == 1 else bits @ (1 << np.arange(png.depth - 1, -1, -1)).astype(np.uint8)[:, None]
        pixels = samples.reshape(len(raw), png.width, 1, 1)
    else:
        pixels = raw.reshape(len(raw), png.width, PNG_CHANNELS[png.colour_type], png.depth // 8)
    colour = pixels[:, :, : PNG_COLOUR[png.colour_type]].reshape(len(raw), png.width, -1)
    if png.colour_type == 3:
        return png.palette_tissue[colour[:, :, 0]]
    return colour[:, :, 0] != 0 if colour.shape[2] == 1 else colour.any(axis=2)
