"""Instance records (spec §6.4) from a labelled map window: ids, classes, areas, outlines.

Coordinates go map px → processing px (× downsample) → level-0 px (`transform.to_level0`).
Given the slide's level-0 `bounds` (w, h), outlines are cut to the slide: the map grid's
last cells overhang it, and so may its last processing pixel by a fraction of itself.
Outlines trace pixel edges exactly and keep the outer boundary of the instance's
first 4-connected part (the reference keeps one contour); an instance whose part
is a single row or column is dropped, as the reference drops contours of < 3 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

from cerberus_batch.grid import CELL
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.outline import hole_rings, instance_ring, outer_ring
from cerberus_batch.tasks.postprocess import ObjectKind
from cerberus_batch.vocabulary import TISSUE

if TYPE_CHECKING:  # annotations only: tasks need not load the slide readers
    from cerberus_batch.slides.transform import Transform

# "str", not "object": an empty table's names must still be stored as text (an empty object column is
# stored with no type, and a dataset read from such a part first cannot read the other slides' names).
# The tissue columns are nullable ("Int32"): null where no tissue head ran, never a class index 0.
COLUMNS = {
    "slide_id": "object", "instance_id": "int64", "class_id": "int32", "class_name": "str",
    "class_prob": "float64", "area_px": "int64", "area_um2": "float64",
    "centroid_x": "float64", "centroid_y": "float64", "tissue_class": "Int32", "tissue_name": "str",
}


@dataclass(frozen=True)
class TissueCells:
    """The tissue type map (a class index per CELL-px cell) and the names of its classes."""

    cells: Any  # 2-D array-like; read only in the window the points need (Zarr arrays stay lazy)
    names: Sequence[str]

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Class index of the cell holding each point (processing px); a point on a cell edge belongs to
        the cell right of or below it."""
        if not len(x):
            return np.zeros(0, np.int64)
        h, w = self.cells.shape
        col = np.clip(np.floor(np.asarray(x) / CELL).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(np.asarray(y) / CELL).astype(np.int64), 0, h - 1)
        top, left = int(row.min()), int(col.min())
        window = np.asarray(self.cells[top : int(row.max()) + 1, left : int(col.max()) + 1])
        return window[row - top, col - left].astype(np.int64)


def vote(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference class rule per row of class counts: the most frequent class (smallest on ties),
    or the runner-up when that is 0 and another class occurs. Returns (class, its count)."""
    best = np.argmax(counts, axis=1)
    runner_up = np.argmax(counts[:, 1:], axis=1) + 1
    rows = np.arange(counts.shape[0])
    use_runner_up = (best == 0) & (counts[rows, runner_up] > 0)
    chosen = np.where(use_runner_up, runner_up, best)
    return chosen, counts[rows, chosen]


@dataclass
class Measured:
    """What a table row needs of each instance, in window px (the window's top-left is its origin)."""

    first_y: np.ndarray  # (n,) the instance's first pixel in raster order
    first_x: np.ndarray
    area: np.ndarray  # (n,) px
    sum_x: np.ndarray  # (n,) sums of pixel columns and rows, exact integers
    sum_y: np.ndarray
    class_counts: np.ndarray | None  # (n, classes) px per class index; None without a type head
    corners: np.ndarray  # (m, 2) x, y outline corners of all instances, one after the other
    ring_starts: np.ndarray  # (n + 1,) where each instance's corners start
    kept: np.ndarray  # (n,) False for instances whose outline is one row or column thin

    @staticmethod
    def joined(parts: Sequence[tuple[Measured, tuple[int, int]]]) -> Measured:
        """Instances of several windows, each given with its origin (y, x), in the coordinates of (0, 0)."""
        corners = [m.corners + (x0, y0) for m, (y0, x0) in parts]
        ring_starts = np.cumsum([0] + [len(c) for c in corners])
        counts = [m.class_counts for m, _ in parts]
        return Measured(
            first_y=np.concatenate([m.first_y + y0 for m, (y0, _) in parts]),
            first_x=np.concatenate([m.first_x + x0 for m, (_, x0) in parts]),
            area=np.concatenate([m.area for m, _ in parts]),
            sum_x=np.concatenate([m.sum_x + x0 * m.area for m, (_, x0) in parts]),
            sum_y=np.concatenate([m.sum_y + y0 * m.area for m, (y0, _) in parts]),
            class_counts=None if any(c is None for c in counts) else _stacked(counts),
            corners=np.concatenate(corners), kept=np.concatenate([m.kept for m, _ in parts]),
            ring_starts=np.concatenate([[0]] + [m.ring_starts[1:] + start for (m, _), start in zip(parts, ring_starts)]),
        )


def _stacked(counts: list[np.ndarray]) -> np.ndarray:
    """Class counts of several windows side by side, padded to the widest."""
    width = max(c.shape[1] for c in counts)
    return np.concatenate([np.pad(c, ((0, 0), (0, width - c.shape[1]))) for c in counts])


def measure(labels: np.ndarray, classes: np.ndarray | None, ids: np.ndarray, class_count: int) -> Measured:
    """The instances `ids` of a label window, one outline traced per instance; classes are counted
    per index 0 .. at least `class_count` - 1."""
    ys, xs = np.nonzero(np.isin(labels, ids))
    found, first, inverse, area = np.unique(labels[ys, xs], return_index=True, return_inverse=True, return_counts=True)
    counts = None
    if classes is not None:  # zero rows when none is found, so windows join with their counts
        width = max(class_count, int(classes.max(initial=0)) + 1)
        counts = np.bincount(inverse * width + classes[ys, xs], minlength=found.size * width).reshape(found.size, width)
    slices = ndimage.find_objects(labels)
    rings = []
    for label in found:
        box = slices[label - 1]
        rings.append(instance_ring(labels[box] == label) + (box[1].start, box[0].start))
    corners = np.concatenate(rings) if rings else np.zeros((0, 2))
    return Measured(
        first_y=ys[first], first_x=xs[first], area=area, sum_x=np.bincount(inverse, xs).astype(np.int64),
        sum_y=np.bincount(inverse, ys).astype(np.int64), class_counts=counts, corners=corners,
        ring_starts=np.cumsum([0] + [len(r) for r in rings]),
        kept=np.array([np.ptp(r[:, 0]) > 1 and np.ptp(r[:, 1]) > 1 for r in rings], bool),
    )


def instance_table(
    labels: np.ndarray, classes: np.ndarray | None, ids: np.ndarray, *, kind: ObjectKind, origin: tuple[int, int],
    map_width: int, geometry: SlideGeometry, tissue: TissueCells | None = None,
) -> gpd.GeoDataFrame:
    """One row per label in `ids` of the window `labels`, whose top-left map px is `origin` (y, x)."""
    return measured_table(measure(labels, classes, ids, len(kind.class_names)), kind=kind, origin=origin, map_width=map_width,
                          geometry=geometry, tissue=tissue)


def measured_table(
    measured: Measured, *, kind: ObjectKind, origin: tuple[int, int], map_width: int, geometry: SlideGeometry,
    tissue: TissueCells | None = None,
) -> gpd.GeoDataFrame:
    """Table rows of measured instances, sorted by `instance_id`: the map-px raster position
    (y * map_width + x) of the instance's first pixel. Areas and centroids count the instance's
    pixels, a pixel the slide's edge cuts as a whole one; instances one pixel thin are dropped.
    Each row's tissue is that of the `tissue` cell holding its centroid (null without a tissue map)."""
    m, transform = measured, geometry.transform
    keep = np.flatnonzero(m.kept)
    if keep.size == 0:
        return empty_table()
    y0, x0 = origin
    instance_id = (y0 + m.first_y[keep]) * map_width + x0 + m.first_x[keep]
    keep = keep[np.argsort(instance_id, kind="stable")]
    area = m.area[keep]
    if m.class_counts is None:
        class_id, class_count = np.ones(keep.size, np.int64), area
    else:
        class_id, class_count = vote(m.class_counts[keep])
    down = kind.downsample
    # Sums of slide coordinates are exact integers, so any window gives the same centroid.
    centre_x = ((m.sum_x[keep] + x0 * area) / area + 0.5) * down
    centre_y = ((m.sum_y[keep] + y0 * area) / area + 0.5) * down
    cx, cy = transform.to_level0(centre_x, centre_y)
    tissue_class = tissue.at(centre_x, centre_y) if tissue is not None else None
    columns = {
        "slide_id": geometry.slide_id,
        "instance_id": np.sort(instance_id),
        "class_id": class_id,
        "class_name": class_names(kind.class_names, class_id),
        "class_prob": class_count / area,
        "area_px": area * down * down,
        "area_um2": area * (down * geometry.mpp) ** 2,
        "centroid_x": cx,
        "centroid_y": cy,
        "tissue_class": tissue_class,
        "tissue_name": None if tissue is None else class_names(tissue.names, tissue_class),
    }
    starts, lengths = m.ring_starts[keep], m.ring_starts[keep + 1] - m.ring_starts[keep]
    corners = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())  # kept rings' rows
    outlines, _ = cut_to_slide(polygons(m.corners[corners] + (x0, y0), lengths, down, transform), geometry.bounds)
    return frame(columns, outlines)


def tissue_table(
    tissue_class: np.ndarray, *, geometry: SlideGeometry, names: Sequence[str] = TISSUE.classes,
) -> gpd.GeoDataFrame:
    """One polygon (with holes) per 4-connected region of each tissue class; background 0 excluded.

    A region the slide's edge cuts has the area and centroid of its part on the slide.
    """
    transform, mpp = geometry.transform, geometry.mpp
    rows, shapes = [], []
    width = tissue_class.shape[1]
    for value in np.unique(tissue_class[tissue_class > 0]):
        regions, _ = ndimage.label(tissue_class == value)
        for index, box in enumerate(ndimage.find_objects(regions), start=1):
            region = regions[box] == index
            offset = (box[1].start, box[0].start)
            ys, xs = np.nonzero(region)
            shapes.append([outer_ring(ndimage.binary_fill_holes(region)) + offset]
                          + [hole + offset for hole in hole_rings(region)])
            rows.append((int(value), (box[0].start + ys[0]) * width + box[1].start + xs[0], ys.size,
                         (xs + offset[0]).mean() + 0.5, (ys + offset[1]).mean() + 0.5))
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    rings = [ring for shape in shapes for ring in shape]
    corners = np.concatenate(rings) if rings else np.zeros((0, 2))
    lengths = np.array([len(ring) for ring in rings], np.int64)
    rings_per_shape = np.array([len(shape) for shape in shapes])
    outlines, cut = cut_to_slide(polygons(corners, lengths, CELL, transform, rings_per_shape), geometry.bounds)
    cx, cy = transform.to_level0(table[:, 3] * CELL, table[:, 4] * CELL)
    area_px = table[:, 2] * CELL * CELL
    area_um2 = table[:, 2] * (CELL * mpp) ** 2
    if cut.any():
        centre = shapely.centroid(outlines[cut])
        cx[cut], cy[cut] = shapely.get_x(centre), shapely.get_y(centre)
        area_px[cut] = shapely.area(outlines[cut]) / (transform.scale_x * transform.scale_y)
        area_um2[cut] = area_px[cut] * mpp**2
    class_id = table[:, 0].astype(np.int32)
    columns = {
        "slide_id": geometry.slide_id,
        "instance_id": table[:, 1].astype(np.int64),
        "class_id": class_id,
        "class_name": class_names(names, class_id),
        "class_prob": np.ones(len(rows)),
        "area_px": np.rint(area_px).astype(np.int64),
        "area_um2": area_um2,
        "centroid_x": cx,
        "centroid_y": cy,
        "tissue_class": class_id,  # a region's tissue is its own type
        "tissue_name": class_names(names, class_id),
    }
    return frame(columns, outlines)


def class_names(names: Sequence[str], class_id: np.ndarray) -> np.ndarray:
    lookup = np.array(list(names) + [str(i) for i in range(len(names), int(class_id.max(initial=0)) + 1)], dtype=object)
    return lookup[class_id]


def polygons(corners: np.ndarray, lengths: np.ndarray, downsample: int, transform: Transform,
             rings_per_shape: np.ndarray | None = None) -> np.ndarray:
    """Polygons from rings of (x, y) map-px corners, `lengths` corners each, one after the other (not
    closed), placed in level-0 px. Shape k has `rings_per_shape[k]` rings, its shell then its holes
    (one each when None). Built from the flat coordinates at once (GeoArrow's layout)."""
    n = len(lengths)
    if n == 0:
        return np.array([], dtype=object)
    ends = np.cumsum(lengths)
    closed = np.empty((len(corners) + n, 2))
    closed[np.arange(len(corners)) + np.repeat(np.arange(n), lengths)] = corners  # room for each ring's closing point
    closed[ends + np.arange(n)] = corners[ends - lengths]
    x, y = transform.to_level0(closed[:, 0] * downsample, closed[:, 1] * downsample)
    ring_offsets = np.concatenate([[0], ends + np.arange(1, n + 1)])
    shape_offsets = np.arange(n + 1) if rings_per_shape is None else np.concatenate([[0], np.cumsum(rings_per_shape)])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.column_stack([x, y]), (ring_offsets, shape_offsets))


def cut_to_slide(outlines: np.ndarray, bounds: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 outlines cut to the slide's box (0, 0, w, h), and which of them were cut.

    Outlines start inside the slide (no cell or pixel of the grid starts past it), so none
    are lost, and cutting a strip off a pixel-edge outline keeps it one polygon.
    Without `bounds` (maps of no slide) the grid is the image.
    """
    if bounds is None or not len(outlines):
        return outlines, np.zeros(len(outlines), bool)
    w, h = bounds
    extent = shapely.bounds(outlines)
    cut = (extent[:, 2] > w) | (extent[:, 3] > h)
    outlines = outlines.copy()
    outlines[cut] = shapely.intersection(outlines[cut], shapely.box(0, 0, w, h))
    return outlines, cut


def frame(columns: dict[str, Any], geometry: np.ndarray) -> gpd.GeoDataFrame:
    """A table with the shared columns in their fixed dtypes; scalars (None: null) broadcast to every row."""
    n = len(geometry)
    data = {name: _column(columns.get(name), dtype, n) for name, dtype in COLUMNS.items()}
    return gpd.GeoDataFrame(data, geometry=gpd.array.from_shapely(np.asarray(geometry, dtype=object)), crs=None)


def _column(value: Any, dtype: str, n: int) -> Any:
    if isinstance(pd.api.types.pandas_dtype(dtype), pd.api.extensions.ExtensionDtype):  # nullable: None is null
        return pd.array(np.full(n, value, object) if np.ndim(value) == 0 else value, dtype=dtype)
    return np.full(n, value, dtype) if np.ndim(value) == 0 else np.asarray(value).astype(dtype, copy=False)


def empty_table() -> gpd.GeoDataFrame:
    return frame({}, np.array([], dtype=object))
