"""QuPath export: one slide's nuclei as GeoJSON detections, its glands, lumens and tissue regions as annotations.

QuPath imports one slide per file (File > Import objects, or drag and drop),
with coordinates in level-0 px, which is how the tables store them. Nuclei are
detections, the light objects QuPath shows by the million; the few large regions
are annotations, which QuPath lets one edit and measure inside. Features are
streamed from the tables in row batches, so a slide of millions of nuclei never
sits in memory as one document.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow.parquet as pq
import shapely

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.colours import instance_colour, tissue_colour
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import table_batches
from cerberus_batch.vocabulary import DRAWING_ORDER, NUCLEI, RGB, TISSUE, Kind

# Those a kind's table has. QuPath's measurements are numbers: an object's tissue type is its class index
# (null where no tissue head ran), and its name a property beside the classification.
MEASUREMENTS = ("area_um2", "area_px", "class_prob", "lumen_count", "tissue_class")
EXPORTED = (TISSUE, *DRAWING_ORDER)  # in file order: the biggest objects first, so QuPath draws smaller ones on top
DETECTIONS = (NUCLEI,)  # the other kinds are annotations


def object_type(kind: Kind) -> str:
    """What QuPath imports an object of this kind as."""
    return "detection" if kind in DETECTIONS else "annotation"


def write_qupath_geojson(output: str | Path, slide_id: str, target: str | Path) -> dict[str, int]:
    """Write the slide's objects as one GeoJSON FeatureCollection; returns how many of each kind, by table name.

    The file appears whole or not at all. Raises FileNotFoundError when the slide has no tables.
    """
    layout = OutputLayout(output)
    parts = {kind: layout.table_files(kind.name, slide_id) for kind in EXPORTED}
    if not any(parts.values()):
        raise FileNotFoundError(f"{layout.tables('*')}: no tables for slide {slide_id!r}")
    counts = dict.fromkeys((kind.name for kind in EXPORTED), 0)
    with atomic_path(Path(target)) as partial, open(partial, "w", encoding="utf-8") as file:
        file.write('{"type": "FeatureCollection", "features": [')
        separator = "\n"
        for kind, paths in parts.items():
            for feature in _features(kind, paths) if paths else ():
                file.write(separator + feature)
                separator = ",\n"
                counts[kind.name] += 1
        file.write("\n]}\n")
    return counts


def _features(kind: Kind, paths: list[Path]) -> Iterator[str]:
    """One compact GeoJSON feature string per table row of the slide's part files (all of one schema)."""
    present = set(pq.ParquetFile(paths[0]).schema_arrow.names)
    measured = [name for name in MEASUREMENTS if name in present]
    named = ["tissue_name"] if "tissue_name" in present else []
    for batch in table_batches(paths, ["class_id", "class_name", "geometry", *measured, *named]):
        geometries = shapely.to_geojson(batch["geometry"].to_numpy())
        for row, geometry in zip(batch.itertuples(index=False), geometries):
            name = str(row.class_name)
            properties = {
                "objectType": object_type(kind),
                "classification": {"name": name, "color": list(_colour(kind, int(row.class_id), name))},
                "isLocked": False,
                "measurements": {m: _number(getattr(row, m)) for m in measured},
                "kind": kind.one,
                **({"tissue": None if _missing(row.tissue_name) else str(row.tissue_name)} if named else {}),
            }
            yield f'{{"type": "Feature", "geometry": {geometry}, "properties": {json.dumps(properties)}}}'


def _colour(kind: Kind, class_id: int, name: str) -> RGB:
    """Tissue types are coloured by index where the vocabulary does not name them, instances by kind."""
    return tissue_colour(class_id, name) if kind is TISSUE else instance_colour(kind.name, name)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _number(value: float) -> float | int | None:
    """JSON has no NaN: a missing measurement becomes null."""
    if _missing(value):
        return None
    return value.item() if hasattr(value, "item") else value
