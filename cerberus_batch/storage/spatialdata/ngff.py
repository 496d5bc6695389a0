"""The SpatialData 0.7 on-disk vocabulary (container format 0.2, zarr v3) that our export writes:
versions, encoding names and coordinate transformations, as `spatialdata.read_zarr` expects them.

Every element maps to one coordinate system, `COORDINATES`, whose unit is the slide's level-0 px
(x right, y down): tables' polygons are already there; a map px j of downsample d lies at
`j * d * scale + offset` on each axis (the slide group's `transform`, processing px -> level 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

CONTAINER_VERSION = "0.2"  # SpatialDataContainerFormatV02: zarr v3
RASTER_VERSION, RASTER_NGFF = "0.3", "0.5-dev-spatialdata"  # RasterFormatV03 (OME-NGFF 0.5 plus our transforms)
SHAPES_VERSION = "0.3"  # ShapesFormatV03: GeoParquet beside the group's attributes
TABLE_VERSION = "0.2"  # TablesFormatV02: an AnnData zarr group
COORDINATES = "global"  # the coordinate system SpatialData tools show by default; here level-0 px
SHAPES_FILE = "shapes.parquet"
INSTANCE_KEY = "instance_id"  # the tables' object id: the shapes' index, the AnnData table's instance key


def _system(name: str, axes: Sequence[str]) -> dict[str, Any]:
    return {"name": name, "axes": [
        {"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": "unit"} for a in axes
    ]}


def identity(axes: Sequence[str]) -> list[dict[str, Any]]:
    """`coordinateTransformations` of an element already in level-0 px (the tables' polygons)."""
    return [{"type": "identity", **_ends(axes)}]


def scaled(axes: Sequence[str], scale: Sequence[float], translation: Sequence[float]) -> list[dict[str, Any]]:
    """`coordinateTransformations` of a raster: its px (`axes` in order, one value each; a channel axis
    keeps 1 and 0) scaled, then translated, to level-0 px."""
    ends = _ends(axes)
    steps = [{"type": "scale", "scale": [float(v) for v in scale], **ends},
             {"type": "translation", "translation": [float(v) for v in translation], **ends}]
    return [{"type": "sequence", "transformations": steps, **ends}]


def _ends(axes: Sequence[str]) -> dict[str, Any]:
    return {"input": _system("".join(axes), axes), "output": _system(COORDINATES, axes)}


def write_group(folder: Path, attributes: Mapping[str, Any]) -> None:
    """A zarr v3 group with these attributes (written as a file: the store is built by hand)."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
    (folder / "zarr.json").write_text(json.dumps(metadata))
