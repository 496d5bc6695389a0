"""Tissue masks: which parts of a slide hold tissue worth running the model on.

A mask is a low-resolution bool array plus how many processing px one mask
pixel spans. It comes from an image file (nonzero = tissue), from automatic
detection on a ~8 µm/px rendering of the slide, or covers everything ("none").
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

from cerberus_batch.errors import SlideError
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


def tissue_mask(view: SlideView, source: str | Path = "auto", *, slide_path: str | Path | None = None) -> TissueMask:
    """The tissue mask of a slide: "auto", "none" or a mask image path. Raises SlideError."""
    slide_path = slide_path or view.slide.info.path
    factor = max(1, round(MASK_MPP / view.mpp))
    if source == "auto":
        low = view.coarsened(factor)
        rgb = render_whole(low.slide, low.level, low.transform, low.shape[1], low.shape[0])
        return TissueMask(detect_tissue(rgb, low.mpp), factor, "auto")
    if source == "none":
        h, w = view.shape
        return TissueMask(np.ones((math.ceil(h / factor), math.ceil(w / factor)), bool), factor, "none")
    return _mask_from_file(Path(source), view.shape, slide_path)


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


@contextmanager
def _no_pixel_limit() -> Iterator[None]:
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _mask_from_file(path: Path, shape: tuple[int, int], slide_path: str | Path) -> TissueMask:
    if not path.is_file():
        raise SlideError(path, f"mask file not found (for slide {slide_path})")
    try:
        # Masks may be level-0 sized; Pillow's decompression-bomb guard is for untrusted web images.
        with _no_pixel_limit(), Image.open(path) as image:
            pixels = np.asarray(image.convert("RGBA") if image.mode == "P" else image)
            has_alpha = image.mode in ("RGBA", "LA", "P", "PA")
    except Exception as err:  # Pillow raises several types for damaged images
        raise SlideError(path, f"not a readable mask image ({type(err).__name__})") from None
    if pixels.ndim == 3:
        # Transparency says nothing about tissue; any nonzero colour channel does.
        pixels = pixels[..., :-1] if has_alpha else pixels
        pixels = pixels.any(axis=2)
    array = pixels != 0
    h, w = shape
    mask_h, mask_w = array.shape
    mismatch = abs((mask_w / mask_h) / (w / h) - 1)
    if mismatch > ASPECT_TOLERANCE:
        raise SlideError(
            path,
            f"mask aspect ratio {mask_w}x{mask_h} differs by {mismatch:.1%} (> 2%) from slide {slide_path} ({w}x{h} processing px)",
        )
    if not array.any():
        warnings.warn(f"{path}: mask has no tissue pixels; slide {slide_path} gets an empty chunk plan", stacklevel=3)
    return TissueMask(array, h / mask_h, str(path), downsample_x=w / mask_w)
