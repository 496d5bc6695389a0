"""Objects cut by chunk borders: each chunk reports its components of a kind as fragments (in slide map
px), and the slide reduction joins fragments whose edge pixels touch across a chunk face or corner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
class Joined:
    """Components of one kind across the slide: fragments joined over chunk faces, by first pixel."""

    first: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    going_on: np.ndarray  # bool: holds a fragment that may go on into chunks not joined here

    def keep(self, which: np.ndarray) -> Joined:
        return Joined(self.first[which], self.boxes[which], self.area[which], self.going_on[which])


def join(
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


def component_stats(components: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (y0, x0, y1, x1), first pixel's flat index, area) of each label 1..n of a window."""
    slices = ndimage.find_objects(components)
    boxes = np.array([(ys.start, xs.start, ys.stop, xs.stop) for ys, xs in slices], np.int64).reshape(-1, 4)
    w = components.shape[1]
    first = np.array([ys.start * w + xs.start + int(np.argmax(components[ys.start, xs] == label))
                      for label, (ys, xs) in enumerate(slices, start=1)], np.int64)
    return boxes, first, np.bincount(components.ravel(), minlength=len(slices) + 1)[1:].astype(np.int64)


def fragments(
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
