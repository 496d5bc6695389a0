"""Nuclei cut by chunk borders, joined across them (union-find on edge pixels) and segmented once each,
from a window holding the joined support whole. Tasks take them in shares of chunk rows
(`border_shares`), each reading only its rows' results and their neighbours', so a share can run
while the rest of the slide still infers; the merge finishes the few a share could not (a nucleus
reaching past its last row)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import geopandas as gpd
import numpy as np

from cerberus_batch.grid import ChunkBox, Window
from cerberus_batch.tasks.fragments import EIGHT_NEIGHBOURS, Fragments, Joined, join
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import Measured, TissueCells, measured_table
from cerberus_batch.tasks.nuclei import find_supports, measure_nuclei
from cerberus_batch.tasks.postprocess import ObjectKind
from cerberus_batch.tasks.windows import (
    clip, core, image_edges, local, read_windows, sorted_table, tissue_cells,
)

if TYPE_CHECKING:
    from cerberus_batch.tasks.chunk import ChunkResult
    from cerberus_batch.tasks.kinds import SlideKinds

MERGE_TILE = 256  # map px; joined nuclei starting in one such tile are segmented from one window
# Map px of windows a border task reads at once, so it holds about this many however big its share (24 MB
# of uint8 maps; a share of the 4x4 CMU mosaic has about 5 million).
WINDOWS_AT_ONCE = 8_000_000


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
    maps: Mapping[str, Any], chunk_results: Sequence[ChunkResult], geometry: SlideGeometry, kinds: SlideKinds,
    share: BorderShare | None = None, finished: Mapping[str, np.ndarray] | None = None,
) -> BorderNuclei:
    """The nuclei cut by chunk borders, joined across them and segmented once each, except those
    `finished` already. With a `share`, `chunk_results` are its chunks' and only the nuclei it owns
    are done: those starting in its rows and lying whole in the chunks it read."""
    tissue = tissue_cells(maps, kinds.tissue_classes)
    done = BorderNuclei({}, {})
    for kind in kinds.objects:
        if kind.method.finished_in_chunks and kind.prob_map in maps:
            table, done.finished[kind.name] = border_kind(maps, kind, chunk_results, geometry, tissue, share, finished)
            done.tables[kind.name] = table
    return done


def border_kind(
    maps: Mapping[str, Any], kind: ObjectKind, chunk_results: Sequence[ChunkResult], geometry: SlideGeometry,
    tissue: TissueCells | None, share: BorderShare | None = None, finished: Mapping[str, np.ndarray] | None = None,
) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """`border_nuclei` of one kind: their table and each one's first pixel."""
    shape = maps[kind.prob_map].shape[1:]
    found = [result.fragments[kind.name] for result in chunk_results]
    going_on = [_going_on(result, fragments, kind, shape, share) for result, fragments in zip(chunk_results, found)]
    joined = join(found, shape, EIGHT_NEIGHBOURS, going_on)
    take = ~np.isin(joined.first, (finished or {}).get(kind.name, np.zeros(0, np.int64)))
    if share is not None:
        starts = joined.first // shape[1] * kind.downsample  # processing px row of each first pixel
        take &= (starts >= share.top) & (starts < share.bottom) & ~joined.going_on
    joined = joined.keep(take)
    return sorted_table(_finish_nuclei(maps, kind, joined, shape, geometry, tissue)), joined.first


def _going_on(
    result: ChunkResult, fragments: Fragments, kind: ObjectKind, shape: tuple[int, int], share: BorderShare | None,
) -> np.ndarray:
    """Which fragments of a chunk in the row below a share's rows reach that chunk's bottom edge (so
    their nucleus may go on into chunks the share did not read); none for a chunk of its own rows."""
    bottom = core(result.box, kind.downsample, shape)[2]
    if share is None or result.box[1] < share.bottom or bottom == shape[0]:
        return np.zeros(len(fragments.first), bool)
    return fragments.boxes[:, 2] == bottom


def _finish_nuclei(
    maps: Mapping[str, Any], kind: ObjectKind, joined: Joined, shape: tuple[int, int], geometry: SlideGeometry,
    tissue: TissueCells | None,
) -> list[gpd.GeoDataFrame]:
    """Segment each joined nucleus support once; supports starting in one tile share a window. Windows
    are read a batch at a time (`read_windows`: each map chunk a batch touches decoded once)."""
    tile = joined.boxes[:, 0] // MERGE_TILE * (shape[1] // MERGE_TILE + 1) + joined.boxes[:, 1] // MERGE_TILE
    order = np.argsort(tile, kind="stable")  # each tile's nuclei together, tiles in raster order
    groups = np.split(order, np.flatnonzero(np.diff(tile[order])) + 1) if len(order) else []
    windows = []
    for members in groups:
        boxes = joined.boxes[members]
        low, high = boxes[:, :2].min(axis=0) - 1, boxes[:, 2:].max(axis=0) + 1  # + 1 px for the erosion
        windows.append(clip((*low, *high), shape))
    has_classes = kind.class_map is not None and kind.class_map in maps
    parts = []
    for batch in _batches(windows):
        read = [windows[k] for k in batch]
        stored = read_windows(maps[kind.prob_map], read)
        classes = read_windows(maps[kind.class_map], read) if has_classes else [None] * len(batch)
        for k, prob, types in zip(batch, stored, classes):
            supports = find_supports(prob, kind)
            chosen = np.zeros(len(supports), bool)
            chosen[supports.labels.ravel()[local(joined.first[groups[k]], windows[k], shape[1])] - 1] = True
            measured = measure_nuclei(prob, types, supports, chosen, kind, image_edges(windows[k], shape))
            parts.append((measured, windows[k][:2]))
    if not parts:
        return []
    return [measured_table(Measured.joined(parts), kind=kind, origin=(0, 0), map_width=shape[1],
                           geometry=geometry, tissue=tissue)]


def _batches(windows: Sequence[Window]) -> list[range]:
    """The windows (in raster order of their tiles) in runs of at most WINDOWS_AT_ONCE px (a bigger one alone)."""
    batches, start, px = [], 0, 0
    for k, (y0, x0, y1, x1) in enumerate(windows):
        if px + (y1 - y0) * (x1 - x0) > WINDOWS_AT_ONCE and k > start:
            batches.append(range(start, k))
            start, px = k, 0
        px += (y1 - y0) * (x1 - x0)
    return batches + [range(start, len(windows))] if windows else []
