"""Cerberus instance post-processing (spec §6): the kinds, their parameters, glands and lumens.

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
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from scipy import ndimage

from cerberus_batch import vocabulary
from cerberus_batch.grid import Window
from cerberus_batch.vocabulary import GLANDS, LUMENS, NUCLEI, Kind


@dataclass(frozen=True)
class ObjectKind:
    """What to segment and how: the reference parameters of one instance type."""

    name: str  # table name: nuclei, glands, lumens
    method: Literal["watershed", "regions"]
    prob_map: str  # (inner, contour) probabilities
    class_map: str | None  # per-pixel class index, None when the model has no TYPE head
    downsample: int  # processing px per map px
    threshold: float  # foreground: inner+contour (nuclei) or inner-(contour>0.5) (regions)
    min_area: int  # objects with fewer map px are removed
    kernel: int = 3  # erosion (nuclei) or dilation (regions) ellipse size
    marker_min_area: int = 4  # nuclei markers with fewer px are removed
    inside: str | None = None  # lumens: kept only inside this kind's objects
    class_names: tuple[str, ...] = ()

    @property
    def pad(self) -> int:
        return 2 * self.kernel


def cerberus_kinds(
    mode: Literal["wsi", "tile"] = "wsi", class_names: Mapping[str, Sequence[str]] | None = None,
) -> tuple[ObjectKind, ObjectKind, ObjectKind]:
    """Nuclei, glands, lumens. WSI mode post-processes glands and lumens on their half-resolution maps
    (ds 0.5), tile mode at full resolution.

    `class_names` (per model head) renames the classes for the model that made the maps.
    """
    nuclei, glands, lumens = (_maps_of(kind, mode, class_names or {}) for kind in (NUCLEI, GLANDS, LUMENS))
    return (
        ObjectKind(method="watershed", threshold=0.5, min_area=8, **nuclei),
        region_kind(glands, base_kernel=11, base_area=1000, threshold=0.55),
        region_kind(lumens, base_kernel=3, base_area=150, threshold=0.5, inside=GLANDS.name),
    )


def _maps_of(kind: Kind, mode: str, class_names: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The ObjectKind fields the vocabulary gives: its maps, their resolution in `mode`, its classes."""
    class_map = kind.class_map
    return dict(
        name=kind.name, prob_map=kind.prob_map.name, class_map=class_map.name if class_map else None,
        downsample=kind.prob_map.downsample if mode == "wsi" else 1, class_names=vocabulary.class_names(kind, class_names),
    )


def region_kind(
    maps: dict[str, Any], *, base_kernel: int, base_area: int, threshold: float, inside: str | None = None,
) -> ObjectKind:
    """A gland-like kind, the reference's parameters scaled to the resolution of its maps (ds = 1 / downsample)."""
    ds = 1 / maps["downsample"]
    return ObjectKind(
        method="regions", threshold=threshold, min_area=int(base_area * ds * ds), kernel=int((base_kernel - 1) * ds),
        inside=inside, **maps,
    )


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
    if kind.method == "watershed":
        return (inner + contour) > kind.threshold
    return (inner - (contour > 0.5).astype(inner.dtype)) > kind.threshold


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
