"""Instance tables of a cohort: GeoParquet 1.1 with a bbox covering, one hive-partitioned dataset per kind.

One dataset per kind (`OutputLayout.tables`), a file per slide. Geometries are in
level-0 pixel coordinates (x right, y down), so no CRS is set. The slide id lives in
the partition path, which readers (geopandas, DuckDB with hive partitioning) turn
back into the `slide_id` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import shapely

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.vocabulary import KINDS

BATCH_ROWS = 65_536


def remove_slide_tables(output_dir: str | Path, slide_id: str) -> None:
    """Drop one slide's part of every kind's dataset (before it is recomputed)."""
    for kind in KINDS:
        OutputLayout(output_dir).table_part(kind.name, slide_id).unlink(missing_ok=True)


def write_slide_tables(output_dir: str | Path, slide_id: str, tables: Mapping[str, gpd.GeoDataFrame]) -> list[Path]:
    """Write (or replace) one slide's part of each kind's dataset; each file appears whole or not at all."""
    if not slide_id or "/" in slide_id or slide_id.startswith((".", "_")):
        raise ValueError(f"slide_id {slide_id!r}: not usable as a partition folder name")
    written = []
    for kind, table in tables.items():
        path = OutputLayout(output_dir).table_part(kind, slide_id)
        write_geoparquet(table.drop(columns="slide_id", errors="ignore"), path)
        written.append(path)
    return written


def write_geoparquet(table: gpd.GeoDataFrame, path: Path) -> None:
    """GeoParquet 1.1 with the bbox covering column, written atomically.

    Dataset readers skip the hidden name ("." prefix) while the file is being written.
    """
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False, schema_version="1.1.0", write_covering_bbox=True)


def read_table(
    output_dir: str | Path, kind: str, slide_ids: Sequence[str] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
) -> gpd.GeoDataFrame:
    """One kind's table across slides; `bbox` (xmin, ymin, xmax, ymax, level-0 px) uses the covering column."""
    folder = OutputLayout(output_dir).tables(kind)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no {kind} table written")
    filters = ds.field("slide_id").isin(list(slide_ids)) if slide_ids is not None else None
    # Slide ids are text even when they look like numbers ("001" must not become 1).
    partitioning = ds.partitioning(pa.schema([("slide_id", pa.string())]), flavor="hive")
    table = gpd.read_parquet(folder, filters=filters, bbox=bbox, partitioning=partitioning)
    table["slide_id"] = table["slide_id"].astype(str)
    return table[["slide_id"] + [c for c in table.columns if c not in ("slide_id", "bbox")]]


def table_batches(path: Path, columns: Sequence[str] = ("class_name", "centroid_x", "centroid_y", "geometry")) -> Iterator[pd.DataFrame]:
    """A table file in row batches, geometries decoded to shapely."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
        frame = batch.to_pandas()
        if "geometry" in frame:
            frame["geometry"] = shapely.from_wkb(frame["geometry"].to_numpy())
        yield frame
