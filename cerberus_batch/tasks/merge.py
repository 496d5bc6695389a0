"""Instances of a whole slide from chunk tasks, identical to post-processing the whole slide at once.

Every result depends only on one connected foreground component of its kind (see
`postprocess`), so:

- a chunk task finishes the nuclei whose support (8-connected mask component) does
  not touch its core's edges, and reports the others as border fragments;
- the slide reduction joins fragments across chunk faces (union-find on edge
  pixels) and segments each joined support once, from a window holding it whole
  (`border_nuclei`). Tasks take it in shares of chunk rows (`border_shares`), each
  reading only its rows' results and their neighbours', so a share can run while
  the rest of the slide still infers; the merge finishes the few a share could not
  (a nucleus reaching past its last row);
- glands and lumens are few: chunks report their thresholded components as
  fragments, and the reduction paints each kept component from its own crop, in
  the global raster order of first pixels (the whole-slide labelling order), so
  later ones overwrite earlier ones exactly as on the whole map.

Windows are read by slicing the maps; memory is bounded by window size, not slide size.
Given the slide's level-0 `bounds` (w, h), every outline is cut to the slide (`instances.cut_to_slide`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cerberus_batch.grid import ChunkBox, Window
from cerberus_batch.quantisation import dequantise
from cerberus_batch.tasks.instances import (
    Measured, TissueCells, empty_table, instance_table, measure, measured_table, tissue_table,
)
from cerberus_batch.tasks.nuclei import find_supports, measure_nuclei
from cerberus_batch.tasks.postprocess import ObjectKind, cerberus_kinds, crop_box, foreground, paint_region, segment_regions
from cerberus_batch.vocabulary import TISSUE

if TYPE_CHECKING:  # annotations only: tasks need not load the slide readers
    from cerberus_batch.slides.transform import Transform

MERGE_TILE = 256  # map px; joined nuclei starting in one such tile are segmented from one window
MERGE_BLOCK = 8  # tiles: windows are visited a block of 8 × 8 tiles (2048 map px) at a time
EDGE_ROUNDING = 1e-6  # map px
EIGHT_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
FOUR_NEIGHBOURS = [(-1, 0), (1, 0), (0, -1), (0, 1)]


@dataclass
class Fragments:
    """Foreground components of one kind inside a chunk core, in slide map px."""

    first: np.ndarray  # (n,) int64 raster position y * W + x of each component's first pixel
    boxes: np.ndarray  # (n, 4) int64, one Window per row
    area: np.ndarray  # (n,) int64 px inside the core
    edge_pixels: np.ndarray  # (m, 3) int64 y, x, component row: its pixels on the core's edges


@dataclass
class ChunkResult:
    """What one chunk task sends to the slide reduction."""

    box: ChunkBox  # the chunk
    tables: dict[str, gpd.GeoDataFrame]  # finished instances per kind
    fragments: dict[str, Fragments]  # components cut by (or, for glands and lumens, all within) the core


def chunk_instances(
    maps: Mapping[str, Any], chunk_box: ChunkBox, *, slide_id: str, transform: Transform, mpp: float,
    bounds: tuple[float, float] | None = None, kinds: Sequence[ObjectKind] = cerberus_kinds(),
    tissue_classes: Sequence[str] = TISSUE.classes,
) -> ChunkResult:
    """Finish the nuclei of one chunk and report everything else as fragments."""
    tables, fragments = {}, {}
    tissue = tissue_cells(maps, tissue_classes)
    for kind in kinds:
        if kind.prob_map not in maps:
            continue
        prob = maps[kind.prob_map]
        core = _core(chunk_box, kind.downsample, prob.shape[1:])
        if kind.method == "watershed":
            stored = _read_stored(prob, core)
            supports = find_supports(stored, kind)
            cut = supports.touching_edges()
            measured = measure_nuclei(stored, _read_classes(maps, kind, core), supports, ~cut, kind,
                                      _image_edges(core, prob.shape[1:]))
            tables[kind.name] = measured_table(measured, kind=kind, origin=core[:2], map_width=prob.shape[2],
                                               slide_id=slide_id, transform=transform, mpp=mpp, bounds=bounds,
                                               tissue=tissue)
            components, stats, report = supports.labels, (supports.boxes, supports.first, supports.area), cut
        else:
            components, _ = ndimage.label(foreground(*_read(prob, core), kind))
            stats = _component_stats(components)
            report = np.ones(len(stats[1]), bool)
        fragments[kind.name] = _fragments(components, stats, report, core[:2], prob.shape[2])
    return ChunkResult(ChunkBox(*chunk_box), tables, fragments)


@dataclass(frozen=True)
class BorderShare:
    """One border task's part of a slide: the nuclei cut by chunk borders whose first pixel lies in
    the chunk rows from `top` to `bottom` (processing px), found from the results of `chunks`
    (positions in the slide's chunk list): those rows, the row above (to see that a nucleus started
    there) and the row below (to see that one goes on past it)."""

    top: int
    bottom: int
    chunks: tuple[int, ...]


def border_shares(boxes: Sequence[ChunkBox], count: int) -> list[BorderShare]:
    """A slide's chunk rows (of its chunks' `boxes`) split into at most `count` runs of consecutive rows;
    none for a slide without chunks (no tissue)."""
    rows = sorted({box[1] for box in boxes})
    if not rows:
        return []
    shares = []
    for run in np.array_split(np.arange(len(rows)), min(count, len(rows))):
        first, last = int(run[0]), int(run[-1])
        read = set(rows[max(first - 1, 0) : last + 2])
        top = rows[first] if first else 0
        bottom = rows[last + 1] if last + 1 < len(rows) else sys.maxsize
        shares.append(BorderShare(top, bottom, tuple(i for i, box in enumerate(boxes) if box[1] in read)))
    return shares


@dataclass
class BorderNuclei:
    """What finishing nuclei on chunk borders gives, per kind: their table and each one's first pixel
    (slide raster position, as `Joined.first`), so a later pass knows which are done."""

    tables: dict[str, gpd.GeoDataFrame]
    finished: dict[str, np.ndarray]


def border_nuclei(
    maps: Mapping[str, Any], chunk_results: Sequence[ChunkResult], share: BorderShare | None = None, *,
    finished: Mapping[str, np.ndarray] | None = None, slide_id: str, transform: Transform, mpp: float,
    bounds: tuple[float, float] | None = None, kinds: Sequence[ObjectKind] = cerberus_kinds(),
    tissue_classes: Sequence[str] = TISSUE.classes,
) -> BorderNuclei:
    """The nuclei cut by chunk borders, joined across them and segmented once each, except those
    `finished` already. With a `share`, `chunk_results` are its chunks' and only the nuclei it owns
    are done: those starting in its rows and lying whole in the chunks it read."""
    place = dict(slide_id=slide_id, transform=transform, mpp=mpp, bounds=bounds, tissue=tissue_cells(maps, tissue_classes))
    done = BorderNuclei({}, {})
    for kind in kinds:
        if kind.method == "watershed" and kind.prob_map in maps:
            shape = maps[kind.prob_map].shape[1:]
            found = [result.fragments[kind.name] for result in chunk_results]
            going_on = [_going_on(result, fragments, kind, shape, share) for result, fragments in zip(chunk_results, found)]
            joined = _join(found, shape, EIGHT_NEIGHBOURS, going_on)
            take = ~np.isin(joined.first, (finished or {}).get(kind.name, np.zeros(0, np.int64)))
            if share is not None:
                starts = joined.first // shape[1] * kind.downsample  # processing px row of each first pixel
                take &= (starts >= share.top) & (starts < share.bottom) & ~joined.going_on
            joined = joined.keep(take)
            done.tables[kind.name] = _sorted(_finish_nuclei(maps, kind, joined, shape, place))
            done.finished[kind.name] = joined.first
    return done


def _going_on(
    result: ChunkResult, fragments: Fragments, kind: ObjectKind, shape: tuple[int, int], share: BorderShare | None,
) -> np.ndarray:
    """Which fragments of a chunk in the row below a share's rows reach that chunk's bottom edge (so
    their nucleus may go on into chunks the share did not read); none for a chunk of its own rows."""
    bottom = _core(result.box, kind.downsample, shape)[2]
    if share is None or result.box[1] < share.bottom or bottom == shape[0]:
        return np.zeros(len(fragments.first), bool)
    return fragments.boxes[:, 2] == bottom


def merge_slide(
    maps: Mapping[str, Any], chunk_results: Sequence[ChunkResult], *, slide_id: str, transform: Transform, mpp: float,
    bounds: tuple[float, float] | None = None, kinds: Sequence[ObjectKind] = cerberus_kinds(),
    tissue_classes: Sequence[str] = TISSUE.classes, finished: Mapping[str, np.ndarray] | None = None,
) -> dict[str, gpd.GeoDataFrame]:
    """All instance tables of a slide from its chunk results (any order), plus tissue regions.

    Nuclei finished in the chunks are included as far as the results still carry them (a chunk
    task that stored its own table part sends fragments only), and the nuclei on chunk borders,
    except those `finished` already (by border tasks, which staged them as their own parts).
    """
    place = dict(slide_id=slide_id, transform=transform, mpp=mpp, bounds=bounds)
    tables: dict[str, gpd.GeoDataFrame] = {}
    regions: dict[str, Regions] = {}
    for kind in kinds:
        if kind.prob_map not in maps:
            tables[kind.name] = empty_table()
            continue
        shape = maps[kind.prob_map].shape[1:]
        if kind.method == "watershed":
            finished_here = [result.tables[kind.name] for result in chunk_results if kind.name in result.tables]
            finished_here += border_nuclei(maps, chunk_results, finished=finished, kinds=(kind,),
                                           tissue_classes=tissue_classes, **place).tables.values()
            tables[kind.name] = _sorted(finished_here)
        else:
            joined = _join([result.fragments[kind.name] for result in chunk_results], shape, FOUR_NEIGHBOURS)
            on_slide = _on_slide(shape, kind.downsample, transform, bounds)
            regions[kind.name] = Regions(maps, kind, joined.keep(joined.area >= kind.min_area), on_slide)
    region_tables, contained = _region_tables(maps, kinds, regions, dict(place, tissue=tissue_cells(maps, tissue_classes)))
    tables.update(region_tables)
    tables.update(_with_counts(tables, kinds, contained))
    tables["tissue"] = _tissue(maps, tissue_classes, place)
    return tables


def slide_instances(
    maps: Mapping[str, Any], *, slide_id: str, transform: Transform, mpp: float,
    bounds: tuple[float, float] | None = None, kinds: Sequence[ObjectKind] = cerberus_kinds(),
    tissue_classes: Sequence[str] = TISSUE.classes,
) -> dict[str, gpd.GeoDataFrame]:
    """The whole-slide reference: post-processing straight on the full maps, in memory."""
    place = dict(slide_id=slide_id, transform=transform, mpp=mpp, bounds=bounds)
    objects = dict(place, tissue=tissue_cells(maps, tissue_classes))
    labelled: dict[str, np.ndarray] = {}
    contained: dict[str, np.ndarray] = {}  # container kind -> its instance_id once per contained object
    tables: dict[str, gpd.GeoDataFrame] = {}
    for kind in kinds:
        if kind.prob_map not in maps:
            tables[kind.name] = empty_table()
            continue
        if kind.method == "watershed":
            stored = np.asarray(maps[kind.prob_map])
            supports = find_supports(stored, kind)
            measured = measure_nuclei(stored, _read_classes(maps, kind, Window(0, 0, *stored.shape[1:])), supports,
                                      np.ones(len(supports), bool), kind)
            tables[kind.name] = measured_table(measured, kind=kind, origin=(0, 0), map_width=stored.shape[2], **objects)
            continue  # nothing lies inside nuclei
        else:
            labels = segment_regions(*dequantise(np.asarray(maps[kind.prob_map])), kind)
            rows, cols = _on_slide(labels.shape, kind.downsample, transform, bounds)
            labels[rows:] = labels[:, cols:] = 0  # dilated past the slide's edge: as `Regions.paint`
        if kind.inside is not None:
            if kind.inside not in labelled:
                tables[kind.name] = empty_table()
                continue
            labels = labels * (labelled[kind.inside] > 0)
            container = labelled[kind.inside]
            found, first = np.unique(container.ravel(), return_index=True)
            outer_id = np.zeros(int(found.max()) + 1, np.int64)
            outer_id[found] = first  # first-pixel raster position = the container's instance_id
            contained[kind.inside] = outer_id[_overlaps(container, labels)]
        labelled[kind.name] = labels
        classes = _read_classes(maps, kind, Window(0, 0, *labels.shape))
        tables[kind.name] = _sorted([instance_table(labels, classes, np.unique(labels[labels > 0]), kind=kind,
                                                    origin=(0, 0), map_width=labels.shape[1], **objects)])
    tables.update(_with_counts(tables, kinds, contained))
    tables["tissue"] = _tissue(maps, tissue_classes, place)
    return tables


@dataclass
class Joined:
    """Components of one kind across the slide: fragments joined over chunk faces, by first pixel."""

    first: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    going_on: np.ndarray  # bool: holds a fragment that may go on into chunks not joined here

    def keep(self, which: np.ndarray) -> Joined:
        return Joined(self.first[which], self.boxes[which], self.area[which], self.going_on[which])


def _join(
    found: Sequence[Fragments], shape: tuple[int, int], neighbours: list[tuple[int, int]],
    going_on: Sequence[np.ndarray] = (),
) -> Joined:
    """Union-find of fragments whose edge pixels are neighbours across a chunk face or corner;
    `going_on` (per fragment of each of `found`) marks a joined component holding any such one."""
    sizes = [len(f.first) for f in found]
    offsets = np.cumsum([0] + sizes)
    n = int(offsets[-1])
    if n == 0:
        return Joined(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    edge = np.concatenate([f.edge_pixels + (0, 0, offset) for f, offset in zip(found, offsets)])
    links = _touching(edge, shape, neighbours)
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    first = np.concatenate([f.first for f in found])
    boxes = np.concatenate([f.boxes for f in found])
    area = np.concatenate([f.area for f in found])
    groups = group.max() + 1
    joined_first = np.full(groups, np.iinfo(np.int64).max)
    np.minimum.at(joined_first, group, first)
    low = np.full((groups, 2), np.iinfo(np.int64).max)
    high = np.zeros((groups, 2), np.int64)
    np.minimum.at(low, group, boxes[:, :2])
    np.maximum.at(high, group, boxes[:, 2:])
    order = np.argsort(joined_first)
    going = np.bincount(group, np.concatenate(going_on) if len(going_on) else None, minlength=groups) > 0 \
        if len(going_on) else np.zeros(groups, bool)
    return Joined(joined_first[order], np.hstack([low, high])[order], np.bincount(group, area)[order].astype(np.int64),
                  going[order])


def _touching(edge: np.ndarray, shape: tuple[int, int], neighbours: list[tuple[int, int]]) -> np.ndarray:
    """(k, 2) fragment rows of edge pixels (y, x, row) that are neighbours of each other."""
    h, w = shape
    keys = edge[:, 0] * w + edge[:, 1]
    order = np.argsort(keys)
    pairs = [np.zeros((0, 2), np.int64)]
    for dy, dx in neighbours if len(edge) else []:
        y, x = edge[:, 0] + dy, edge[:, 1] + dx
        wanted = y * w + x
        at = np.minimum(np.searchsorted(keys, wanted, sorter=order), len(keys) - 1)
        hit = (y >= 0) & (y < h) & (x >= 0) & (x < w) & (keys[order[at]] == wanted)
        pairs.append(np.column_stack([edge[hit, 2], edge[order[at[hit]], 2]]))
    return np.concatenate(pairs)


def _finish_nuclei(
    maps: Mapping[str, Any], kind: ObjectKind, joined: Joined, shape: tuple[int, int], place: dict[str, Any],
) -> list[gpd.GeoDataFrame]:
    """Segment each joined nucleus support once; supports starting in one tile share a window.
    Tiles are taken block by block (MERGE_BLOCK tiles a side, raster order within and between blocks),
    so each stretch of windows reads its own part of the maps (a row of tiles across the slide would
    decode every chunk of that row again for each row)."""
    ty, tx = joined.boxes[:, 0] // MERGE_TILE, joined.boxes[:, 1] // MERGE_TILE
    tile = ty * (shape[1] // MERGE_TILE + 1) + tx
    keys, first = np.unique(tile, return_index=True)
    keys = keys[np.lexsort((tx[first], ty[first], tx[first] // MERGE_BLOCK, ty[first] // MERGE_BLOCK))]
    parts = []
    for key in keys:
        members = tile == key
        boxes = joined.boxes[members]
        low, high = boxes[:, :2].min(axis=0) - 1, boxes[:, 2:].max(axis=0) + 1  # + 1 px for the erosion
        window = _clip((*low, *high), shape)
        stored = _read_stored(maps[kind.prob_map], window)
        supports = find_supports(stored, kind)
        chosen = np.zeros(len(supports), bool)
        chosen[supports.labels.ravel()[_local(joined.first[members], window, shape[1])] - 1] = True
        measured = measure_nuclei(stored, _read_classes(maps, kind, window), supports, chosen, kind,
                                  _image_edges(window, shape))
        parts.append((measured, window[:2]))
    if not parts:
        return []
    return [measured_table(Measured.joined(parts), kind=kind, origin=(0, 0), map_width=shape[1], **place)]


class Regions:
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
        inner, contour = _read(self.maps[self.kind.prob_map], crop)
        components, _ = ndimage.label(foreground(inner, contour, self.kind))
        own = components == components.ravel()[_local(self.joined.first[index : index + 1], crop, self.shape[1])[0]]
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


def _region_tables(
    maps: Mapping[str, Any], kinds: Sequence[ObjectKind], regions: dict[str, Regions], place: dict[str, Any],
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
            measured = measure(labels, _read_classes(maps, kind, window), np.array([1]), len(kind.class_names))
            if measured.kept.any():  # the row the table keeps: its instance_id as `measured_table` gives it
                ids[kind.name][index] = (window[0] + measured.first_y[0]) * own.shape[1] + window[1] + measured.first_x[0]
            parts.append((measured, window[:2]))
        # One table for all: building a table per region cost more than finding the regions.
        tables[kind.name] = measured_table(Measured.joined(parts), kind=kind, origin=(0, 0), map_width=own.shape[1],
                                           **place) if parts else empty_table()
        if container is not None:
            contained[kind.inside] = ids[kind.inside][np.concatenate(under_each or [np.zeros(0, np.int64)])]
    return tables, contained


def _overlaps(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Outer label of every distinct (outer, inner) overlapping pair."""
    both = (outer > 0) & (inner > 0)
    pairs = np.unique(np.column_stack([outer[both], inner[both]]), axis=0)
    return pairs[:, 0]


def _with_counts(
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


def tissue_cells(maps: Mapping[str, Any], names: Sequence[str]) -> TissueCells | None:
    """The slide's tissue type map, where the tissue head ran."""
    return TissueCells(maps[TISSUE.class_map.name], names) if TISSUE.class_map.name in maps else None


def _tissue(maps: Mapping[str, Any], names: Sequence[str], place: dict[str, Any]) -> gpd.GeoDataFrame:
    if TISSUE.class_map.name not in maps:
        return empty_table()
    return tissue_table(np.asarray(maps[TISSUE.class_map.name][:]), names=names, **place)


def _on_slide(
    shape: tuple[int, int], downsample: int, transform: Transform, bounds: tuple[float, float] | None,
) -> tuple[int, int]:
    """Rows and columns of a map (processing px per map px: `downsample`) that cover part of the slide."""
    if bounds is None:
        return shape
    x, y = transform.from_level0(*bounds)
    # A map px reaching past the edge by float error alone (< 1e-6 px) is not on the slide.
    rows, cols = (math.ceil(v / downsample - EDGE_ROUNDING) for v in (y, x))
    return min(shape[0], rows), min(shape[1], cols)


def _component_stats(components: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (y0, x0, y1, x1), first pixel's flat index, area) of each label 1..n of a window."""
    slices = ndimage.find_objects(components)
    boxes = np.array([(ys.start, xs.start, ys.stop, xs.stop) for ys, xs in slices], np.int64).reshape(-1, 4)
    w = components.shape[1]
    first = np.array([ys.start * w + xs.start + int(np.argmax(components[ys.start, xs] == label))
                      for label, (ys, xs) in enumerate(slices, start=1)], np.int64)
    return boxes, first, np.bincount(components.ravel(), minlength=len(slices) + 1)[1:].astype(np.int64)


def _fragments(
    components: np.ndarray, stats: tuple[np.ndarray, np.ndarray, np.ndarray], report: np.ndarray,
    origin: tuple[int, int], map_width: int,
) -> Fragments:
    """The components (label = row + 1) that `report` picks of a core-sized label map, in slide map px."""
    y0, x0 = origin
    boxes, first, area = (a[report] for a in stats)
    h, w = components.shape
    row_of = np.full(len(report) + 1, -1, np.int64)
    row_of[1:][report] = np.arange(int(report.sum()))
    rim = np.unique(np.concatenate([np.arange(w), (h - 1) * w + np.arange(w), np.arange(h) * w, np.arange(h) * w + w - 1]))
    ys, xs = np.divmod(rim, w)
    row = row_of[components[ys, xs]]
    on_edge = row >= 0
    edge = np.column_stack([ys[on_edge] + y0, xs[on_edge] + x0, row[on_edge]])
    fy, fx = np.divmod(first, w)
    return Fragments((fy + y0) * map_width + fx + x0, boxes + (y0, x0, y0, x0), area, edge.astype(np.int64))


def _core(chunk_box: ChunkBox, downsample: int, shape: tuple[int, int]) -> Window:
    x, y, w, h = chunk_box
    return _clip((y // downsample, x // downsample, (y + h) // downsample, (x + w) // downsample), shape)


def _clip(box: Sequence[int], shape: tuple[int, int]) -> Window:
    y0, x0, y1, x1 = box
    return Window(max(int(y0), 0), max(int(x0), 0), min(int(y1), shape[0]), min(int(x1), shape[1]))


def _image_edges(window: Window, shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    return window[0] == 0, window[2] == shape[0], window[1] == 0, window[3] == shape[1]


def _local(first: np.ndarray, window: Window, map_width: int) -> np.ndarray:
    """Slide raster positions to flat positions inside the window."""
    y, x = np.divmod(first, map_width)
    return (y - window[0]) * (window[3] - window[1]) + x - window[1]


def _read_stored(prob: Any, window: Window) -> np.ndarray:
    y0, x0, y1, x1 = window
    return np.asarray(prob[:, y0:y1, x0:x1])


def _read(prob: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
    inner_contour = dequantise(_read_stored(prob, window))
    return inner_contour[0], inner_contour[1]


def _read_classes(maps: Mapping[str, Any], kind: ObjectKind, window: Window) -> np.ndarray | None:
    if kind.class_map is None or kind.class_map not in maps:
        return None
    y0, x0, y1, x1 = window
    return np.asarray(maps[kind.class_map][y0:y1, x0:x1])


def _sorted(tables: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    present = [t for t in tables if len(t)]
    if not present:
        return empty_table()
    merged = pd.concat(present, ignore_index=True)
    return gpd.GeoDataFrame(merged, geometry="geometry").sort_values("instance_id", ignore_index=True)
