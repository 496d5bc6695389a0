"""A slide's maps as SpatialData rasters: probability maps as images (c, y, x), class maps as labels (y, x).

Class maps are labels because that is SpatialData's raster of integer classes (viewers colour them);
both keep every viewer level as a scale. Zarr chunks are copied byte for byte (the map arrays are
already zarr v3 with the axes SpatialData wants), so no map is ever decoded and memory stays flat.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, cast

from cerberus_batch.storage.spatialdata.ngff import RASTER_NGFF, RASTER_VERSION, scaled, write_group
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.vocabulary import HEAD_MAPS, INST_CHANNELS, PER_CLASS, StoredMap

IMAGES, LABELS = "images", "labels"


def write_rasters(maps: Path, store: Path) -> None:
    """Copy the slide's map group at `maps` into the store folder."""
    group = open_slide_maps(maps)
    attrs = dict(group.attrs)
    written: dict[str, list[str]] = {IMAGES: [], LABELS: []}
    for name, image in group.groups():
        head, stored = _stored(name)
        element = IMAGES if stored.form == "prob" else LABELS
        multiscale = image.attrs["ome"]["multiscales"][0]
        levels = [dataset["path"] for dataset in multiscale["datasets"]]
        folder = store / element / name
        for level in levels:
            shutil.copytree(maps / name / level, folder / level)
        axes = [axis["name"] for axis in multiscale["axes"]]
        ome: dict[str, Any] = {"version": RASTER_NGFF, "multiscales": [_multiscale(name, axes, levels, stored, attrs)]}
        if element == IMAGES:
            ome["omero"] = {"channels": [{"label": c} for c in _channels(head, stored, attrs)]}
        write_group(folder, {"ome": ome, "spatialdata_attrs": {"version": RASTER_VERSION}})
        written[element].append(name)
    write_group(store / IMAGES, {})
    write_group(store / LABELS, {"ome": {"labels": written[LABELS]}})


def _multiscale(name: str, axes: list[str], levels: list[str], stored: StoredMap, attrs: Mapping[str, Any]) -> dict:
    """Level k halves level k - 1 (`storage.pyramid`): its px spans 2^k level-0 map px."""
    lead = [1.0] * (len(axes) - 2)
    t = attrs["transform"]
    d = stored.downsample
    return {
        "name": name,
        "axes": [{"name": a, "type": "channel" if a == "c" else "space"} for a in axes],
        "datasets": [{"path": level, "coordinateTransformations": [{"type": "scale", "scale": lead + [2.0**k] * 2}]}
                     for k, level in enumerate(levels)],
        "coordinateTransformations": scaled(
            axes, lead + [d * t["scale_y"], d * t["scale_x"]], [0.0] * len(lead) + [t["offset_y"], t["offset_x"]]),
    }


def _stored(name: str) -> tuple[str, StoredMap]:
    return next((head, stored) for head, maps in HEAD_MAPS.items() for stored in maps if stored.name == name)


def _channels(head: str, stored: StoredMap, attrs: Mapping[str, Any]) -> list[str]:
    """Per-class maps name their channels by the model's classes; an INST map keeps its last outputs."""
    if stored.channels == PER_CLASS:
        return list(attrs["class_names"][head])
    return list(INST_CHANNELS[-cast(int, stored.channels):])
