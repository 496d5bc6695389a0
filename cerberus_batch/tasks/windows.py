"""Windows of a slide's maps, read by slicing (Zarr arrays stay lazy), for every stage that makes tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from cerberus_batch.grid import ChunkBox, Window
from cerberus_batch.quantisation import dequantise
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import TissueCells, empty_table, tissue_table
from cerberus_batch.vocabulary import TISSUE

if TYPE_CHECKING:
    from cerberus_batch.tasks.postprocess import ObjectKind


def core(chunk_box: ChunkBox, downsample: int, shape: tuple[int, int]) -> Window:
    """The chunk's output box in map px (processing px per map px: `downsample`), clipped to the map."""
    x, y, w, h = chunk_box
    return clip((y // downsample, x // downsample, (y + h) // downsample, (x + w) // downsample), shape)


def clip(box: Sequence[int], shape: tuple[int, int]) -> Window:
    y0, x0, y1, x1 = box
    return Window(max(int(y0), 0), max(int(x0), 0), min(int(y1), shape[0]), min(int(x1), shape[1]))


def image_edges(window: Window, shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which sides of the window (top, bottom, left, right) are the map's own edges."""
    return window[0] == 0, window[2] == shape[0], window[1] == 0, window[3] == shape[1]


def local(first: np.ndarray, window: Window, map_width: int) -> np.ndarray:
    """Slide raster positions to flat positions inside the window."""
    y, x = np.divmod(first, map_width)
    return (y - window[0]) * (window[3] - window[1]) + x - window[1]


def read_stored(prob: Any, window: Window) -> np.ndarray:
    y0, x0, y1, x1 = window
    return np.asarray(prob[:, y0:y1, x0:x1])


def read_windows(array: Any, windows: Sequence[Window]) -> list[np.ndarray]:
    """Many windows of a (C, h, w) or (h, w) map at once: a map read chunk by chunk decodes each chunk
    they touch once (`ChunkCache.windows`), any other array is sliced window by window."""
    keys = [(slice(None),) * (len(array.shape) - 2) + (slice(y0, y1), slice(x0, x1)) for y0, x0, y1, x1 in windows]
    many = getattr(array, "windows", None)
    return many(keys) if many else [np.asarray(array[key]) for key in keys]


def read_inner_contour(prob: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
    inner_contour = dequantise(read_stored(prob, window))
    return inner_contour[0], inner_contour[1]


def read_classes(maps: Mapping[str, Any], kind: ObjectKind, window: Window) -> np.ndarray | None:
    if kind.class_map is None or kind.class_map not in maps:
        return None
    y0, x0, y1, x1 = window
    return np.asarray(maps[kind.class_map][y0:y1, x0:x1])


def sorted_table(tables: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """Tables of one kind joined, sorted by `instance_id`."""
    present = [t for t in tables if len(t)]
    if not present:
        return empty_table()
    merged = pd.concat(present, ignore_index=True)
    return gpd.GeoDataFrame(merged, geometry="geometry").sort_values("instance_id", ignore_index=True)


def tissue_cells(maps: Mapping[str, Any], names: Sequence[str]) -> TissueCells | None:
    """The slide's tissue type map, where the tissue head ran."""
    return TissueCells(maps[TISSUE.class_map.name], names) if TISSUE.class_map.name in maps else None


def tissue_regions(maps: Mapping[str, Any], names: Sequence[str], geometry: SlideGeometry) -> gpd.GeoDataFrame:
    """The slide's tissue regions table (empty where the tissue head did not run)."""
    if TISSUE.class_map.name not in maps:
        return empty_table()
    return tissue_table(np.asarray(maps[TISSUE.class_map.name][:]), geometry=geometry, names=names)
