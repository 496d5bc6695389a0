"""The nuclei post-processing as it was written before it was compiled (cerberus-batch 0.1):
whole-window numpy / scipy / skimage passes. The independent expectation the compiled
`cerberus_batch.tasks.nuclei` must equal, label for label."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from cerberus_batch.tasks.postprocess import ObjectKind, foreground, remove_small

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = np.ones((3, 3), bool)
TIE_STEP = 2.0**-40


def erode_cross(mask: np.ndarray, image_edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """cv2.erode with the 3×3 cross: beyond the image edge counts as foreground (OpenCV's border).

    `image_edges` says which sides (top, bottom, left, right) of `mask` are the map's edge;
    other sides see background, which only matters for pixels the caller discards.
    """
    padded = np.pad(mask, 1)
    top, bottom, left, right = image_edges
    padded[0] |= top
    padded[-1] |= bottom
    padded[:, 0] |= left
    padded[:, -1] |= right
    return ndimage.binary_erosion(padded, FOUR)[1:-1, 1:-1]


def segment_nuclei(
    inner: np.ndarray, contour: np.ndarray, kind: ObjectKind,
    image_edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """Marker watershed (spec §6.3). Returns (instance labels, support labels).

    Supports are the 8-connected components of the un-eroded mask; each instance
    lies in one support and depends on nothing outside it (plus one pixel).
    """
    mask = foreground(inner, contour, kind)
    support, _ = ndimage.label(mask, EIGHT)
    body = remove_small(erode_cross(mask, image_edges), kind.min_area)
    seeds = remove_small(inner > 0.5, kind.marker_min_area)
    markers, _ = ndimage.label(fill_own_holes(seeds, support))
    markers[~body] = 0
    flood = -inner.astype(np.float64)
    seeded = np.flatnonzero(markers)
    flood.ravel()[seeded] -= _tie_order(support.ravel()[seeded]) * TIE_STEP
    return watershed(flood, markers, mask=body).astype(np.int32), support


def fill_own_holes(seeds: np.ndarray, support: np.ndarray) -> np.ndarray:
    """binary_fill_holes, except holes that touch more than one support stay open."""
    holes, n = ndimage.label(ndimage.binary_fill_holes(seeds) & ~seeds)
    if n == 0:
        return seeds
    h, w = holes.shape
    padded = np.pad(support, 1)
    pairs = []
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        around = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        both = (holes > 0) & (around > 0)
        pairs.append(holes[both].astype(np.int64) * (support.max() + 1) + around[both])
    hole_of_pair = np.unique(np.concatenate(pairs)) // (support.max() + 1)
    clean = np.bincount(hole_of_pair, minlength=n + 1) == 1
    return seeds | clean[holes]


def _tie_order(support_of_seed: np.ndarray) -> np.ndarray:
    """Per seed pixel (given in raster order): how many later seed pixels share its support."""
    order = np.argsort(support_of_seed, kind="stable")
    grouped = support_of_seed[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, grouped.size])
    rank = np.arange(grouped.size) - np.repeat(starts, sizes)
    later = np.empty_like(rank)
    later[order] = np.repeat(sizes, sizes) - 1 - rank
    return later.astype(np.float64)
