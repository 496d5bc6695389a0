"""A slide's nuclei as the AnnData table of a SpatialData store, written with zarr alone.

AnnData's own writer needs the whole table in memory and pins pandas < 3, which this project cannot
take; its on-disk encoding (anndata 0.8+, "anndata" 0.1.0) is plain zarr, written here column by column
in blocks of `parts.ROWS` rows, a zarr chunk each: memory does not grow with the slide's nuclei. One
row per nucleus, in the shapes' row order: obs holds every table column but the geometry (text as
categoricals, integers with nulls as nullable integers) plus `region`, naming the shapes element;
obsm["spatial"] holds the centroids (x, y, level-0 px), where squidpy looks for them; X is absent
(no features per nucleus).
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from cerberus_batch.storage.spatialdata.ngff import INSTANCE_KEY, TABLE_VERSION
from cerberus_batch.storage.spatialdata.parts import ROWS, blocks, unified_schema
from cerberus_batch.storage.spatialdata.shapes import COVERING

REGION_KEY = "region"
LEFT_OUT = ("geometry", COVERING)  # in the shapes element, or GeoParquet's own
CENTROID = ("centroid_x", "centroid_y")
ARRAY, STRINGS = {"encoding-type": "array", "encoding-version": "0.2.0"}, {"encoding-type": "string-array", "encoding-version": "0.2.0"}
DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}


def write_table(parts: list[Path], folder: Path, region: str) -> None:
    """Write the nuclei table of the part files (those of the shapes element `region`) into `folder`."""
    schema = unified_schema(parts, [name for name in pq.read_schema(parts[0]).names if name not in LEFT_OUT])
    columns = schema.names
    texts, nullable, n = _survey(parts, schema)
    root = zarr.open_group(folder, mode="w", zarr_format=3)
    root.attrs.update({
        "encoding-type": "anndata", "encoding-version": "0.1.0",
        "spatialdata-encoding-type": "ngff:regions_table", "region": region, "region_key": REGION_KEY,
        "instance_key": INSTANCE_KEY, "version": TABLE_VERSION,
    })
    obs = root.create_group("obs", attributes={
        "encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index", "column-order": [REGION_KEY, *columns],
    })
    _categorical(obs, REGION_KEY, [region], n)
    for name in columns:
        if name in texts:
            _categorical(obs, name, texts[name], n)
        elif name in nullable:
            group = obs.create_group(name, attributes={"encoding-type": "nullable-integer", "encoding-version": "0.1.0"})
            group.create_array("values", shape=(n,), chunks=(ROWS,), dtype=_numpy(schema, name), attributes=ARRAY)
            group.create_array("mask", shape=(n,), chunks=(ROWS,), dtype=bool, attributes=ARRAY)
        else:
            obs.create_array(name, shape=(n,), chunks=(ROWS,), dtype=_numpy(schema, name), attributes=ARRAY)
    index = obs.create_array("_index", shape=(n,), chunks=(ROWS,), dtype=str, attributes=STRINGS)
    obsm = root.create_group("obsm", attributes=DICT)
    spatial = obsm.create_array("spatial", shape=(n, 2), chunks=(ROWS, 2), dtype="float64", attributes=ARRAY)
    var = root.create_group("var", attributes={"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index", "column-order": []})
    var.create_array("_index", shape=(0,), chunks=(1,), dtype=str, attributes=STRINGS)
    for name in ("layers", "obsp", "varm", "varp"):
        root.create_group(name, attributes=DICT)
    keys = root.create_group("uns", attributes=DICT).create_group("spatialdata_attrs", attributes=DICT)
    for key, value in (("region", region), ("region_key", REGION_KEY), ("instance_key", INSTANCE_KEY)):
        keys.create_array(key, shape=(), dtype=str, attributes={"encoding-type": "string", "encoding-version": "0.2.0"})[()] = value

    start = 0
    for block in blocks(parts, schema):  # a zarr chunk each: written once, whole
        rows = slice(start, start + block.num_rows)
        obs[f"{REGION_KEY}/codes"][rows] = np.zeros(block.num_rows, np.int8)
        for name in columns:
            column = block.column(name)
            if name in texts:
                codes = pc.fill_null(pc.index_in(column, value_set=pa.array(texts[name], column.type)), -1)
                target = obs[f"{name}/codes"]
                target[rows] = codes.to_numpy().astype(target.dtype)
            elif name in nullable:
                obs[f"{name}/mask"][rows] = column.is_null().to_numpy(zero_copy_only=False)
                obs[f"{name}/values"][rows] = column.fill_null(0).to_numpy()
            else:
                obs[name][rows] = column.to_numpy()
        index[rows] = np.asarray(block.column(INSTANCE_KEY).to_numpy().astype(str), dtype=object)
        spatial[rows] = np.column_stack([block.column(c).to_numpy() for c in CENTROID])
        start = rows.stop


def _survey(parts: list[Path], schema: pa.Schema) -> tuple[dict[str, list[str]], set[str], int]:
    """One pass over the text and integer columns: each text column's values (its categories, sorted),
    the integer columns holding a null, and the row count."""
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    values: dict[str, set[str]] = {c: set() for c in text}
    nullable: set[str] = set()
    n = 0
    for part in parts:
        table = pq.read_table(part, columns=text + ints)
        n += table.num_rows
        for c in text:
            values[c].update(v for v in pc.unique(table.column(c)).to_pylist() if v is not None)
        nullable.update(c for c in ints if table.column(c).null_count)
    return {c: sorted(v) for c, v in values.items()}, nullable, n


def _numpy(schema: pa.Schema, name: str) -> np.dtype:
    return np.dtype(schema.field(name).type.to_pandas_dtype())


def _categorical(obs: zarr.Group, name: str, categories: list[str], n: int) -> None:
    group = obs.create_group(name, attributes={"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
    group.create_array("categories", shape=(len(categories),), chunks=(max(1, len(categories)),), dtype=str, attributes=STRINGS)[:] = np.asarray(categories, dtype=object)
    codes = np.int8 if len(categories) < 128 else np.int16 if len(categories) < 32768 else np.int32
    group.create_array("codes", shape=(n,), chunks=(ROWS,), dtype=codes, attributes=ARRAY)
