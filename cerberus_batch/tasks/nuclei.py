"""Nuclei (spec §6.3) and their records (§6.4), compiled, one support at a time.

Every nucleus depends only on its support (the 8-connected component of the foreground
mask holding it) and one pixel around it (see `postprocess`), so after one labelling pass over
the window the work runs support by support on the support's own box: time follows the
foreground, not the window (skimage's watershed and scipy's hole filling pass over all of it).

Why numba rather than OpenCV or rasterio: the flood must break ties exactly as skimage's
watershed does (value, then push order) and outlines must trace pixel edges exactly as
`outline` does, in one pass per support; no library exposes either, a compiled loop does both.

The code runs in phases, each its own module: supports (`nuclei_supports`), then per support erosion,
markers and holes (`nuclei_phases`), flood (`nuclei_flood`) and record (`nuclei_record`, outlines by
`outline`'s tracer), over named buffers (`nuclei_buffers`).

The rules, per support S with box B (plus a 1-px margin):
- body: S eroded by the 3×3 cross (beyond the map edge counts as foreground where `image_edges`
  says the side is the map's edge), 4-connected parts of fewer than `min_area` px removed;
- markers: inner > 0.5 in S, 4-connected parts of fewer than `marker_min_area` px removed, holes
  filled unless the hole or its 4-neighbours touch another support, labelled 4-connected, kept on
  the body;
- flood: skimage's watershed(-inner, markers, mask=body), connectivity 1 (neighbours up, left,
  right, down): labels given on push, a pixel queued at the higher of its value and the level that
  reached it, ties by push order; marker pixels enter in raster order,
  each lowered by TIE_STEP (`nuclei_flood`) per later marker pixel of S, so equal probabilities flood in raster order
  (a heap; uint8 maps level by level in linear time; one marker breadth-first);
- record: first pixel, area, coordinate sums, class counts, and the outline of the instance's
  first 4-connected part (holes filled), traced clockwise from the first pixel's top-left corner,
  one corner per turn, exactly as `outline.instance_ring`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cerberus_batch.quantisation import dequantise
from cerberus_batch.tasks.instances import Measured
from cerberus_batch.tasks.nuclei_buffers import Window
from cerberus_batch.tasks.nuclei_record import measure
from cerberus_batch.tasks.nuclei_supports import label_supports
from cerberus_batch.tasks.postprocess import ObjectKind


@dataclass
class Supports:
    """8-connected foreground components of a window; component k is label k + 1."""

    labels: np.ndarray  # (h, w) int32, 0 = background
    boxes: np.ndarray  # (n, 4) int64 y0, x0, y1, x1 (exclusive)
    first: np.ndarray  # (n,) int64 flat window index of each component's first pixel (raster order)
    area: np.ndarray  # (n,) int64
    rows: np.ndarray  # the components' pixels, grouped by component, each group in raster order
    cols: np.ndarray
    starts: np.ndarray  # (n + 1,) where each component's pixels start in `rows` and `cols`

    def __len__(self) -> int:
        return len(self.first)

    def touching_edges(self) -> np.ndarray:
        """Which components reach the window's edge (and so may continue beyond it)."""
        h, w = self.labels.shape
        b = self.boxes
        return (b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == h) | (b[:, 3] == w)


def lookup(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table): stored probabilities as codes, and the float32 each code reads as, identical to
    `dequantise` (uint8 codes, or float16 bit patterns); float32 maps are their own codes."""
    if prob.dtype == np.uint8:
        return prob, dequantise(np.arange(256, dtype=np.uint8))
    if prob.dtype == np.float16:
        return prob.view(np.uint16), dequantise(np.arange(2**16, dtype=np.uint16).view(np.float16))
    return prob.astype(np.float32, copy=False), np.zeros(0, np.float32)


def find_supports(prob: np.ndarray, kind: ObjectKind) -> Supports:
    """Supports of a (2, h, w) stored (inner, contour) window."""
    codes, table = lookup(prob)
    return Supports(*label_supports(np.ascontiguousarray(codes[0]), np.ascontiguousarray(codes[1]), table,
                               np.float32(kind.threshold)))


def measure_nuclei(
    prob: np.ndarray, classes: np.ndarray | None, supports: Supports, chosen: np.ndarray, kind: ObjectKind,
    image_edges: tuple[bool, bool, bool, bool] = (True, True, True, True), labels: np.ndarray | None = None,
) -> Measured:
    """Segment the `chosen` supports of a stored (2, h, w) window and measure their nuclei.

    `classes` is the class-index map of the window (None: no type head). When `labels` (h, w) int32
    is given, each nucleus's pixels are set to its row number + 1 there.
    """
    codes, table = lookup(prob)
    width = max(len(kind.class_names), int(classes.max(initial=0)) + 1) if classes is not None else 1
    window = Window(
        supports.labels, supports.boxes, supports.rows, supports.cols, supports.starts,
        np.ascontiguousarray(codes[0]), table,
        np.zeros((1, 1), np.uint8) if classes is None else np.ascontiguousarray(classes),
        np.array(image_edges, np.bool_), np.zeros((1, 1), np.int32) if labels is None else labels,
    )
    (first, area, sum_x, sum_y, counts, corners, ring_starts, kept) = measure(
        window, np.flatnonzero(chosen).astype(np.int64), width, kind.min_area, kind.marker_min_area)
    w = supports.labels.shape[1]
    return Measured(
        first_y=first // w, first_x=first % w, area=area, sum_x=sum_x, sum_y=sum_y,
        class_counts=counts if classes is not None else None, corners=corners, ring_starts=ring_starts, kept=kept,
    )


def segment_nuclei(
    inner: np.ndarray, contour: np.ndarray, kind: ObjectKind,
    image_edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """Label images (instances, supports) of float probability maps: every support segmented."""
    prob = np.stack([inner, contour])
    supports = find_supports(prob, kind)
    labels = np.zeros(supports.labels.shape, np.int32)
    measure_nuclei(prob, None, supports, np.ones(len(supports), bool), kind, image_edges, labels)
    return labels, supports.labels
