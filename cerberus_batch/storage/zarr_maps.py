"""The Zarr store of a slide's probability maps: `<output>/maps/<slide_id>/`, Zarr format 3.

Each array is chunked exactly like the pipeline's chunk tasks (scaled to its
resolution), so no two tasks ever write the same Zarr chunk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from cerberus_batch.grid import CELL
from cerberus_batch.storage.maps import MapSpec


def maps_path(output: Path, slide_id: str) -> Path:
    return Path(output) / "maps" / slide_id


def create_slide_maps(
    path: Path,
    *,
    shape: tuple[int, int],
    chunk: int,
    specs: list[MapSpec],
    dtype: str,
    attrs: Mapping[str, Any],
) -> zarr.Group:
    """Create (or reopen, when its attributes match) the map group of one slide.

    `shape` is the processing-pixel (h, w) of the output grid, a whole number of cells.
    """
    if path.exists():
        group = zarr.open_group(path, mode="r+")
        stored = {k: group.attrs.get(k) for k in attrs}
        if stored != _plain(attrs):
            raise ValueError(f"{path}: existing maps were written with other settings")
        return group
    group = zarr.open_group(path, mode="w", zarr_format=3)
    h, w = shape
    for spec in specs:
        size = (h // spec.downsample, w // spec.downsample)
        tile = (max(1, chunk // spec.downsample),) * 2
        lead = () if spec.channels is None else (spec.channels,)
        group.create_array(
            spec.name,
            shape=lead + size,
            chunks=lead + tile,
            dtype=dtype if spec.probability else "uint8",
            fill_value=0,
            dimension_names=(("c",) if lead else ()) + ("y", "x"),
        )
    mpp = float(attrs["mpp"])
    group.attrs.update({**_plain(attrs), "ome": _ngff(specs, mpp)})
    return group


def write_chunk(group: zarr.Group, x: int, y: int, stored: Mapping[str, np.ndarray], specs: list[MapSpec]) -> None:
    """Write one chunk task's maps; (x, y) is its processing-pixel origin."""
    for spec in specs:
        values = stored[spec.name]
        ys, xs = y // spec.downsample, x // spec.downsample
        window = (slice(ys, ys + values.shape[-2]), slice(xs, xs + values.shape[-1]))
        if spec.channels is not None:
            window = (slice(None),) + window
        group[spec.name][window] = values


def open_slide_maps(path: Path, writable: bool = False) -> zarr.Group:
    return zarr.open_group(path, mode="r+" if writable else "r")


def _ngff(specs: list[MapSpec], mpp: float) -> dict:
    """OME-NGFF 0.5 `multiscales` for the per-pixel probability maps, so napari opens them."""
    multiscales = []
    for spec in specs:
        if spec.channels is None or spec.downsample == CELL:
            continue
        scale = mpp * spec.downsample
        multiscales.append(
            {
                "name": spec.name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {"path": spec.name, "coordinateTransformations": [{"type": "scale", "scale": [1.0, scale, scale]}]}
                ],
            }
        )
    return {"version": "0.5", "multiscales": multiscales}


def _plain(attrs: Mapping[str, Any]) -> dict:
    """Attributes as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(attrs)))
