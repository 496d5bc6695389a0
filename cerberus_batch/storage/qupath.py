"""QuPath export: one slide's nuclei, glands and lumens as GeoJSON detections.

QuPath imports one slide per file (File > Import objects, or drag and drop),
with coordinates in level-0 px, which is how the tables store them. Features
are streamed from the tables in row batches, so a slide of millions of nuclei
never sits in memory as one document.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import shapely

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.colours import instance_colour
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import table_batches
from cerberus_batch.vocabulary import DRAWING_ORDER, Kind

MEASUREMENTS = ("area_um2", "area_px", "class_prob", "lumen_count")


def table_slides(output: str | Path) -> list[str]:
    """Slide ids that have nuclei, gland or lumen tables in an output folder, sorted."""
    layout = OutputLayout(output)
    return sorted({slide_id for kind in DRAWING_ORDER for slide_id in layout.table_slides(kind.name)})


def write_qupath_geojson(output: str | Path, slide_id: str, target: str | Path) -> int:
    """Write the slide's objects as a GeoJSON FeatureCollection of QuPath detections; returns how many.

    The file appears whole or not at all. Raises FileNotFoundError when the slide has no tables.
    """
    layout = OutputLayout(output)
    parts = {kind: layout.table_files(kind.name, slide_id) for kind in DRAWING_ORDER}  # features in drawing order
    if not any(parts.values()):
        raise FileNotFoundError(f"{layout.tables('*')}: no tables for slide {slide_id!r}")
    target = Path(target)
    count = 0
    with atomic_path(target) as partial, open(partial, "w", encoding="utf-8") as file:
        file.write('{"type": "FeatureCollection", "features": [')
        for kind, paths in parts.items():
            for feature in _features(kind, paths) if paths else ():
                file.write(("\n" if count == 0 else ",\n") + feature)
                count += 1
        file.write("\n]}\n")
    return count


def _features(kind: Kind, paths: list[Path]) -> Iterator[str]:
    """One compact GeoJSON feature string per table row of the slide's part files (all of one schema)."""
    present = set(pq.ParquetFile(paths[0]).schema_arrow.names)
    measured = [name for name in MEASUREMENTS if name in present]
    for batch in table_batches(paths, ["class_name", "geometry", *measured]):
        geometries = shapely.to_geojson(batch["geometry"].to_numpy())
        for row, geometry in zip(batch.itertuples(index=False), geometries):
            name = str(row.class_name)
            properties = {
                "objectType": "detection",
                "classification": {"name": name, "color": list(instance_colour(kind.name, name))},
                "isLocked": False,
                "measurements": {m: _number(getattr(row, m)) for m in measured},
                "kind": kind.one,
            }
            yield f'{{"type": "Feature", "geometry": {geometry}, "properties": {json.dumps(properties)}}}'


def _number(value: float) -> float | int | None:
    """JSON has no NaN: a missing measurement becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
