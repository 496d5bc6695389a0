"""Viewer levels of a slide's maps: each map halved again and again, listed in its OME-NGFF 0.5 metadata.

A viewer showing a 200 mm² slide whole must not read its full-resolution maps. Each map is an
OME-NGFF image of its own (`zarr_maps`) with levels `1`, `2`, … beside its level `0`, each half the one
before (`storage.levels`: shapes, and how a block halves by the map's `type`). Chunk tasks write the first
levels from the maps they hold (`zarr_maps.write_chunk`); once the slide's maps are written, its pyramid
task makes the rest from the last of those (a small read) and lists them all. A level's scale and
translation follow from level 0's.

Each level is built beside its place and renamed into it, and the metadata listing the levels is
written after them (a rebuild first lists level 0 only), so a reader never meets a listed level that
is not there. A rebuild first removes what a killed one left half written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from cerberus_batch.storage.atomic import SOFTWARE, atomic_path, fsync_tree, sweep_leftovers
from cerberus_batch.storage.levels import chunk_levels, halve, level_shapes
from cerberus_batch.storage.zarr_maps import COMPRESSOR, LEVEL0, open_slide_maps

def build_pyramid(path: Path) -> dict[str, int]:
    """Write the levels of every map of the slide group at `path` and list them in each map's
    metadata; returns how many levels (level 0 included) each map has."""
    return {name: build_levels(image) for name, image in open_slide_maps(path, writable=True).groups()}


def build_levels(image: zarr.Group) -> int:
    """Write the levels of one map (an OME-NGFF image group) that its chunk tasks did not, from the last
    level they did (`levels.chunk_levels`), and list them all; returns their count."""
    multiscale = image.attrs["ome"]["multiscales"][0]
    shapes = level_shapes(image[LEVEL0].shape)
    made = chunk_levels(image[LEVEL0].chunks[-1], len(shapes))
    source = image[str(made)]
    if len(multiscale["datasets"]) > 1:  # a rebuild: the levels it replaces are no longer listed
        _list_levels(image, multiscale, 1)
    folder = Path(image.store.root) / image.path
    sweep_leftovers(folder)  # the levels a killed build left half written
    for k, shape in enumerate(shapes[made + 1 :], start=made + 1):
        with atomic_path(folder / str(k)) as partial:
            target = zarr.create_array(
                partial, shape=shape, chunks=tuple(min(c, n) for c, n in zip(source.chunks, shape)),
                dtype=source.dtype, fill_value=0, dimension_names=source.metadata.dimension_names,
                compressors=COMPRESSOR, attributes={"software": SOFTWARE},  # what lets a rebuild replace it (`atomic_path`)
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


def _chunk_windows(array: zarr.Array) -> Iterator[tuple[slice, ...]]:
    """The array's chunks as windows, in raster order (leading axes whole)."""
    (h, w), (ch, cw) = array.shape[-2:], array.chunks[-2:]
    lead = tuple(slice(None) for _ in array.shape[:-2])
    for y in range(0, h, ch):
        for x in range(0, w, cw):
            yield lead + (slice(y, min(y + ch, h)), slice(x, min(x + cw, w)))
