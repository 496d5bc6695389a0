"""Glands and lumens of a slide from the components its chunks reported: few, so each kept component is
painted from its own crop of the maps, in the global raster order of first pixels (the whole-slide
labelling order), so later ones overwrite earlier ones exactly as on the whole map."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
from scipy import ndimage

from cerberus_batch.grid import Window
from cerberus_batch.tasks.fragments import Joined
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import Measured, TissueCells, empty_table, measure, measured_table
from cerberus_batch.tasks.postprocess import ObjectKind, crop_box, foreground, paint_region
from cerberus_batch.tasks.windows import local, read_classes, read_inner_contour


class PaintedRegions:
    """The kept glands (or lumens) of a slide, each painted from its own crop of the maps.

    Painting stops at `on_slide` (map rows, cols on the slide): a dilation reaching past the slide's edge
    paints nothing there, as the map's zero padding is no part of the slide.
    """

    def __init__(self, maps: Mapping[str, Any], kind: ObjectKind, joined: Joined, on_slide: tuple[int, int]) -> None:
        self.maps, self.kind, self.joined, self.on_slide = maps, kind, joined, on_slide
        self.shape = maps[kind.prob_map].shape[1:]
        crops = [crop_box(Window(*b), kind.pad, self.shape) for b in joined.boxes]
        self.crops = np.array(crops, np.int64).reshape(-1, 4)
        self.painted: Callable[[int], np.ndarray] = lru_cache(maxsize=256)(self._paint)

    def __len__(self) -> int:
        return len(self.joined.first)

    def _paint(self, index: int) -> np.ndarray:
        crop = Window(*(int(v) for v in self.crops[index]))
        inner, contour = read_inner_contour(self.maps[self.kind.prob_map], crop)
        components, _ = ndimage.label(foreground(inner, contour, self.kind))
        own = components == components.ravel()[local(self.joined.first[index : index + 1], crop, self.shape[1])[0]]
        return paint_region(own, self.kind)

    def paint(self, window: Window) -> np.ndarray:
        """Label map of the window: index + 1 of the last (in raster order) region covering each px."""
        out = np.zeros((window[2] - window[0], window[3] - window[1]), np.int32)
        c = self.crops
        near = (c[:, 0] < window[2]) & (c[:, 2] > window[0]) & (c[:, 1] < window[3]) & (c[:, 3] > window[1])
        for index in np.flatnonzero(near):
            y0, x0, y1, x1 = (int(v) for v in c[index])
            ty0, tx0, ty1, tx1 = max(y0, window[0]), max(x0, window[1]), min(y1, window[2]), min(x1, window[3])
            part = self.painted(int(index))[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            out[ty0 - window[0] : ty1 - window[0], tx0 - window[1] : tx1 - window[1]][part] = index + 1
        out[max(self.on_slide[0] - window[0], 0) :] = 0
        out[:, max(self.on_slide[1] - window[1], 0) :] = 0
        return out


def region_tables(
    maps: Mapping[str, Any], kinds: Sequence[ObjectKind], regions: dict[str, PaintedRegions], geometry: SlideGeometry,
    tissue: TissueCells | None,
) -> tuple[dict[str, gpd.GeoDataFrame], dict[str, np.ndarray]]:
    """Tables of glands and lumens, and for each container kind the instance_id of the container
    once per contained object overlapping it. A kind's container comes before it in `kinds`."""
    tables: dict[str, gpd.GeoDataFrame] = {}
    ids: dict[str, np.ndarray] = {}  # kind -> instance_id per region index (-1: no row)
    contained: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind.name not in regions:
            continue
        own = regions[kind.name]
        container = regions.get(kind.inside) if kind.inside is not None else None
        if kind.inside is not None and container is None:
            tables[kind.name] = empty_table()
            continue
        parts, under_each = [], []
        ids[kind.name] = np.full(len(own), -1, np.int64)
        for index in range(len(own)):
            window = Window(*(int(v) for v in own.crops[index]))
            labels = (own.paint(window) == index + 1).astype(np.int32)
            if container is not None:
                under = container.paint(window)
                labels[under == 0] = 0
                under_each.append(np.unique(under[labels > 0]) - 1)
            measured = measure(labels, read_classes(maps, kind, window), np.array([1]), len(kind.class_names))
            if measured.kept.any():  # the row the table keeps: its instance_id as `measured_table` gives it
                ids[kind.name][index] = (window[0] + measured.first_y[0]) * own.shape[1] + window[1] + measured.first_x[0]
            parts.append((measured, window[:2]))
        # One table for all: building a table per region cost more than finding the regions.
        tables[kind.name] = measured_table(Measured.joined(parts), kind=kind, origin=(0, 0), map_width=own.shape[1],
                                           geometry=geometry, tissue=tissue) if parts else empty_table()
        if container is not None:
            contained[kind.inside] = ids[kind.inside][np.concatenate(under_each or [np.zeros(0, np.int64)])]
    return tables, contained


def overlaps(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Outer label of every distinct (outer, inner) overlapping pair."""
    both = (outer > 0) & (inner > 0)
    pairs = np.unique(np.column_stack([outer[both], inner[both]]), axis=0)
    return pairs[:, 0]


def with_counts(
    tables: dict[str, gpd.GeoDataFrame], kinds: Sequence[ObjectKind], contained: dict[str, np.ndarray],
) -> dict[str, gpd.GeoDataFrame]:
    """Container tables (glands) with the number of contained objects each holds (`lumen_count`)."""
    counted = {}
    for kind in kinds:
        if kind.inside is None or kind.inside not in tables:
            continue
        counts = pd.Series(contained.get(kind.inside, np.zeros(0, np.int64))).value_counts()
        table = tables[kind.inside].copy()
        table[f"{kind.name.removesuffix('s')}_count"] = table["instance_id"].map(counts).fillna(0).astype(np.int32)
        counted[kind.inside] = table
    return counted
