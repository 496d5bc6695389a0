"""A slide's table of one kind as a SpatialData shapes element: `shapes.parquet`, indexed by `instance_id`.

The slide's part files are streamed row batch by row batch into one GeoParquet file, so memory does
not grow with the slide's objects. SpatialData reads it with geopandas, whose index comes from the
pandas metadata: `instance_id`, the key its tables link rows to shapes by. The bbox covering column
is GeoParquet's, not SpatialData's, and is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cerberus_batch.storage.spatialdata.ngff import INSTANCE_KEY, SHAPES_FILE, SHAPES_VERSION, identity, write_group
from cerberus_batch.storage.spatialdata.parts import blocks, unified_schema

COVERING = "bbox"


def write_shapes(parts: list[Path], folder: Path) -> None:
    """Write the shapes element of one kind's part files (at least one row in all) into `folder`."""
    schemas = [pq.read_schema(part) for part in parts]
    columns = [name for name in schemas[0].names if name != COVERING]
    schema = unified_schema(parts, columns).with_metadata({b"geo": json.dumps(_geo(schemas)), b"pandas": json.dumps(_pandas(schemas[0]))})
    write_group(folder, {
        "encoding-type": "ngff:shapes", "axes": ["x", "y"], "coordinateTransformations": identity(("x", "y")),
        "spatialdata_attrs": {"version": SHAPES_VERSION},
    })
    with pq.ParquetWriter(folder / SHAPES_FILE, schema) as writer:
        for block in blocks(parts, schema):
            writer.write_table(block)


def _geo(schemas: list[pa.Schema]) -> dict:
    """GeoParquet metadata covering every part: their geometry types, their joint bbox, no covering column."""
    metas = [json.loads(s.metadata[b"geo"]) for s in schemas]
    geo = metas[0]
    column = geo["primary_column"]
    entries = [meta["columns"][column] for meta in metas]
    entry = {k: v for k, v in entries[0].items() if k not in ("covering", "bbox")}
    entry["geometry_types"] = sorted({t for e in entries for t in e.get("geometry_types", [])})
    boxes = [e["bbox"] for e in entries if e.get("bbox")]
    if boxes:
        entry["bbox"] = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return {**geo, "columns": {column: entry}}


def _pandas(schema: pa.Schema) -> dict:
    """The parts' pandas metadata with `instance_id` as the index (it stays a column of the file)."""
    meta = json.loads(schema.metadata[b"pandas"])
    meta["index_columns"] = [INSTANCE_KEY]
    meta["columns"] = [c for c in meta["columns"] if c["field_name"] != COVERING]
    return meta
