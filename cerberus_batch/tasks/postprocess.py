"""Cerberus instance post-processing (spec §6): a kind's parameters and method, glands and lumens.

Nuclei are segmented by `nuclei`, under these rules.

Two deliberate deviations from the reference keep every result a function of
its own 8-connected foreground component, so chunked and whole-slide runs agree:

- A hole in the nucleus markers is filled only when every foreground pixel in
  it and every marker around it belong to one 8-connected component of the
  nucleus mask ("support"). The reference also fills holes that enclose a
  separate support, which glues that nucleus to its neighbour's label.
- Marker pixels with equal probability enter the watershed flood in raster
  order within their support (skimage breaks such ties by heap layout, which
  depends on everything else in the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import numpy as np
from scipy import ndimage

from cerberus_batch.grid import Window
from cerberus_batch.vocabulary import Kind

if TYPE_CHECKING:
    import geopandas as gpd

    from cerberus_batch.tasks.fragments import Fragments
    from cerberus_batch.tasks.geometry import SlideGeometry
    from cerberus_batch.tasks.instances import TissueCells
    from cerberus_batch.tasks.merge import Reduction
    from cerberus_batch.tasks.whole import WholeSlide


class Method(Protocol):
    """How a kind is segmented, stage by stage (`tasks.kinds.Watershed`, `tasks.kinds.Regions`)."""

    finished_in_chunks: bool  # whether a chunk finishes the objects inside its core

    def foreground(self, inner: np.ndarray, contour: np.ndarray, threshold: float) -> np.ndarray: ...

    def chunk(
        self, maps: Mapping[str, Any], kind: ObjectKind, core: Window, geometry: SlideGeometry, tissue: TissueCells | None,
    ) -> tuple[gpd.GeoDataFrame | None, Fragments]: ...

    def reduce(self, reduction: Reduction, kind: ObjectKind) -> None: ...

    def whole(self, whole: WholeSlide, kind: ObjectKind) -> None: ...


@dataclass(frozen=True)
class ObjectKind:
    """A kind of the vocabulary as post-processing finds it, for one model at one resolution: its method
    and the reference's parameters."""

    kind: Kind  # what it is: table name, maps
    method: Method
    downsample: int  # processing px per map px
    threshold: float  # foreground: inner+contour (nuclei) or inner-(contour>0.5) (regions)
    min_area: int  # objects with fewer map px are removed
    kernel: int = 3  # erosion (nuclei) or dilation (regions) ellipse size
    marker_min_area: int = 4  # nuclei markers with fewer px are removed
    inside: str | None = None  # lumens: kept only inside this kind's objects
    class_names: tuple[str, ...] = ()  # as the model that made the maps names them

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def prob_map(self) -> str:
        """The name of its (inner, contour) probability map."""
        return self.kind.prob_map.name

    @property
    def class_map(self) -> str | None:
        """The name of its per-pixel class map; None when the model has no TYPE head for it."""
        return self.kind.class_map.name if self.kind.class_map else None

    @property
    def pad(self) -> int:
        return 2 * self.kernel


def ellipse_kernel(k: int) -> np.ndarray:
    """OpenCV's getStructuringElement(MORPH_ELLIPSE, (k, k)), anchor at (k // 2, k // 2)."""
    if k == 1:
        return np.ones((1, 1), bool)
    r = c = k // 2
    out = np.zeros((k, k), bool)
    for i in range(k):
        dy = i - r
        if abs(dy) <= r:
            dx = int(np.rint(c * np.sqrt((r * r - dy * dy) / (r * r))))
            out[i, max(c - dx, 0) : min(c + dx + 1, k)] = True
    return out


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """cv2.dilate with the k×k ellipse and default anchor; nothing enters from outside the array."""
    kernel = ellipse_kernel(k)
    a = k // 2
    h, w = mask.shape
    padded = np.pad(mask, ((a, k - 1 - a), (a, k - 1 - a)))
    out = np.zeros_like(mask, dtype=bool)
    for i, j in np.argwhere(kernel):
        out |= padded[i : i + h, j : j + w]
    return out


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 4-connected objects with fewer than `min_area` px (skimage < 0.26 `remove_small_objects`)."""
    labels, _ = ndimage.label(mask)
    area = np.bincount(labels.ravel())
    keep = area >= min_area
    keep[0] = False
    return keep[labels]


def foreground(inner: np.ndarray, contour: np.ndarray, kind: ObjectKind) -> np.ndarray:
    """Strict thresholds, as the reference: exactly the threshold is background."""
    return kind.method.foreground(inner, contour, kind.threshold)


def crop_box(box: Window, pad: int, shape: tuple[int, int]) -> Window:
    """Pad `box` by `pad`, skipping any side where the reference would leave the image.

    The reference keeps a side unpadded unless the padded low edge is >= 0 or the
    padded (exclusive) high edge is <= size - 1, so it never reaches the last row/column.
    """
    y0, x0, y1, x1 = box
    h, w = shape
    return Window(
        y0 - pad if y0 - pad >= 0 else y0,
        x0 - pad if x0 - pad >= 0 else x0,
        y1 + pad if y1 + pad <= h - 1 else y1,
        x1 + pad if x1 + pad <= w - 1 else x1,
    )


def paint_region(instance: np.ndarray, kind: ObjectKind) -> np.ndarray:
    """What one gland/lumen covers inside its crop: dilated once, holes filled."""
    return ndimage.binary_fill_holes(dilate(instance, kind.kernel))


def segment_regions(inner: np.ndarray, contour: np.ndarray, kind: ObjectKind) -> np.ndarray:
    """Glands and lumens (spec §6.1, §6.2) on a whole map; later ids overwrite earlier ones."""
    labels, _ = ndimage.label(remove_small(foreground(inner, contour, kind), kind.min_area))
    out = np.zeros(labels.shape, np.int32)
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        y0, x0, y1, x1 = crop_box(Window(rows.start, cols.start, rows.stop, cols.stop), kind.pad, labels.shape)
        painted = paint_region(labels[y0:y1, x0:x1] == index, kind)
        out[y0:y1, x0:x1][painted] = index
    return out
