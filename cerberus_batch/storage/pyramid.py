"""Viewer levels of a slide's maps: each map halved again and again, listed in its OME-NGFF 0.5 metadata.

A viewer showing a 200 mm² slide whole must not read its full-resolution maps. Each map is an
OME-NGFF image of its own (`zarr_maps`); once the slide's maps are written, it gets levels `1`,
`2`, … beside its level `0`, each half the one before (rounded up), until the longer side is at most
`SMALLEST` px. How a level is made is what the map's metadata names as its `type`: "mean" for
probabilities (each 2 × 2 block's mean, rounded half to even as they were quantised), "mode" for
classes (the block's most common class; ties to the first in raster order, which is what
nearest-neighbour sampling would pick). A level's scale and translation follow from level 0's.

Each level is built beside its place and renamed into it, and the metadata listing the levels is
written after them (a rebuild first lists level 0 only), so a reader never meets a listed level that
is not there. A rebuild first removes what a killed one left half written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from cerberus_batch.storage.atomic import SOFTWARE, atomic_path, fsync_tree, sweep_leftovers
from cerberus_batch.storage.zarr_maps import LEVEL0, MEAN, MODE, open_slide_maps

SMALLEST = 1000  # px: no level is added below a map whose longer side is this or less


def level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of a map's levels, level 0 first: each the previous halved (rounded up) in y and x."""
    shapes = [tuple(shape)]
    while max(shapes[-1][-2:]) > SMALLEST:
        *lead, h, w = shapes[-1]
        shapes.append((*lead, math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def build_pyramid(path: Path) -> dict[str, int]:
    """Write the levels of every map of the slide group at `path` and list them in each map's
    metadata; returns how many levels (level 0 included) each map has."""
    return {name: build_levels(image) for name, image in open_slide_maps(path, writable=True).groups()}


def build_levels(image: zarr.Group) -> int:
    """Write the levels of one map (an OME-NGFF image group) from its level 0; returns their count."""
    multiscale = image.attrs["ome"]["multiscales"][0]
    source = image[LEVEL0]
    shapes = level_shapes(source.shape)
    if len(multiscale["datasets"]) > 1:  # a rebuild: the levels it replaces are no longer listed
        _list_levels(image, multiscale, 1)
    folder = Path(image.store.root) / image.path
    sweep_leftovers(folder)  # the levels a killed build left half written
    for k, shape in enumerate(shapes[1:], start=1):
        with atomic_path(folder / str(k)) as partial:
            target = zarr.create_array(
                partial, shape=shape, chunks=tuple(min(c, n) for c, n in zip(source.chunks, shape)),
                dtype=source.dtype, fill_value=0, dimension_names=source.metadata.dimension_names,
                attributes={"software": SOFTWARE},  # what lets a rebuild replace it (`atomic_path`)
            )
            halve_into(source, target, multiscale["type"])
        source = image[str(k)]
    if len(shapes) > 1:
        _list_levels(image, multiscale, len(shapes))
    return len(shapes)


def _list_levels(image: zarr.Group, multiscale: dict[str, Any], levels: int) -> None:
    """Make the image's metadata list its first `levels` levels, durably (a ledger record may follow)."""
    image.attrs["ome"] = {**image.attrs["ome"], "multiscales": [with_levels(multiscale, levels)]}
    folder = Path(image.store.root) / image.path
    fsync_tree(folder, folder / "zarr.json")


def with_levels(multiscale: dict[str, Any], levels: int) -> dict[str, Any]:
    """The multiscale with datasets `0` … `levels - 1`, made from its level 0's.

    A px of level k spans 2^k × 2^k px of level 0: its scale is 2^k times theirs (in y and x), and
    its centre, where its translation puts it, is the centre of that block."""
    scale, translation = (t[t["type"]] for t in multiscale["datasets"][0]["coordinateTransformations"])
    lead = len(scale) - 2  # the channel axis keeps its scale and translation
    datasets = []
    for k in range(levels):
        grown = [s * 2**k for s in scale[lead:]]
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": scale[:lead] + grown},
                {"type": "translation",
                 "translation": translation[:lead] + [t + (g - s) / 2 for t, g, s in zip(translation[lead:], grown, scale[lead:])]},
            ],
        })
    return {**multiscale, "datasets": datasets}


def halve_into(source: zarr.Array, target: zarr.Array, method: str) -> None:
    """Fill `target` with `source` halved, one target chunk at a time (each reads 2 × 2 source chunks)."""
    for window in _chunk_windows(target):
        wide = window[:-2] + tuple(slice(2 * s.start, min(2 * s.stop, n)) for s, n in zip(window[-2:], source.shape[-2:]))
        target[window] = halve(np.asarray(source[wide]), method)


def halve(block: np.ndarray, method: str) -> np.ndarray:
    """A (…, h, w) block at half the resolution, (…, ceil(h/2), ceil(w/2)), by `method` (MEAN or MODE).

    A last odd row or column is its own neighbour: it counts twice, so it alone makes its px."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    even = np.pad(block, pad, mode="edge")
    quads = np.stack([even[..., 0::2, 0::2], even[..., 0::2, 1::2], even[..., 1::2, 0::2], even[..., 1::2, 1::2]])
    if method == MEAN:
        mean = quads.mean(axis=0, dtype=np.float32)  # exact for uint8: sums of four are at most 1020
        return (np.rint(mean) if np.issubdtype(block.dtype, np.integer) else mean).astype(block.dtype)
    if method != MODE:
        raise ValueError(f"unknown way to make levels: {method!r} (expected {MEAN!r} or {MODE!r})")
    votes = (quads[:, None] == quads[None, :]).sum(axis=1, dtype=np.uint8)  # how often each of the four occurs in its block
    return np.take_along_axis(quads, np.argmax(votes, axis=0)[None], axis=0)[0]


def _chunk_windows(array: zarr.Array) -> Iterator[tuple[slice, ...]]:
    """The array's chunks as windows, in raster order (leading axes whole)."""
    (h, w), (ch, cw) = array.shape[-2:], array.chunks[-2:]
    lead = tuple(slice(None) for _ in array.shape[:-2])
    for y in range(0, h, ch):
        for x in range(0, w, cw):
            yield lead + (slice(y, min(y + ch, h)), slice(x, min(x + cw, w)))
