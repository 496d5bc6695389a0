"""Instance tables of a cohort: GeoParquet 1.1 with a bbox covering, one hive-partitioned dataset per kind.

One dataset per kind (`OutputLayout.tables`), a partition folder per slide holding several part
files: one per chunk with the objects that chunk finished, and the merge's (objects across chunk
borders, and every gland, lumen and tissue region). Geometries are in level-0 pixel coordinates
(x right, y down), so no CRS is set. The slide id lives in the partition path, which readers
(geopandas, DuckDB with hive partitioning) turn back into the `slide_id` column.

A run stages a slide's parts in a hidden folder keyed by its token and commits each kind by
renaming that folder into place, so a reader sees a slide's previous partition or its new one,
each whole, never a mix of two runs' parts.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import shapely

from cerberus_batch.slide_ids import SAFE_ID_RULE, is_safe_slide_id
from cerberus_batch.storage.atomic import atomic_path, fsync_path, replace_folder
from cerberus_batch.storage.layout import MERGE_PART, OutputLayout
from cerberus_batch.storage.ledger import Ledger
from cerberus_batch.vocabulary import KINDS

BATCH_ROWS = 65_536
READ_TRIES = 3


def _check_slide_id(slide_id: str) -> None:
    # The cohort file's ids are checked where it is read: one that is not safe here is a bug.
    if not is_safe_slide_id(slide_id):
        raise ValueError(f"slide_id {slide_id!r}: not usable as a partition folder name ({SAFE_ID_RULE})")


def stage_table_part(
    output_dir: str | Path, slide_id: str, token: str, kind: str, part: int | str, table: gpd.GeoDataFrame,
) -> Path:
    """Write one part (a chunk's, a border share's) of a slide's table for the run with this token; readers see it only
    once `write_slide_tables` commits the slide. Written again (a task's retry), it is replaced whole."""
    _check_slide_id(slide_id)
    path = OutputLayout(output_dir).staged_part(kind, slide_id, token, part)
    write_geoparquet(table.drop(columns="slide_id", errors="ignore"), path)
    return path


def write_slide_tables(
    output_dir: str | Path, slide_id: str, tables: Mapping[str, gpd.GeoDataFrame], token: str | None = None,
) -> None:
    """Commit one slide's table of each kind given: the table, as the last part, with the parts the
    run with this token staged (none without a token), replaces the slide's partition of that kind.

    Calling it again with the same token (Dask reruns a task whose worker died) leaves a kind this
    token already committed as it is and finishes one whose renames had not happened, so the
    chunks' parts are never lost to a commit of the merge's part alone.
    """
    _check_slide_id(slide_id)
    token = token or uuid.uuid4().hex[:8]
    layout, ledger = OutputLayout(output_dir), Ledger(Path(output_dir))
    for kind, table in tables.items():
        last = layout.staged_part(kind, slide_id, token, MERGE_PART)
        if ledger.commit_token(slide_id, kind) != token:
            write_geoparquet(table.drop(columns="slide_id", errors="ignore"), last)
            ledger.mark_commit(slide_id, kind, token)
            _commit(layout, kind, slide_id, token)
        elif last.is_file():  # recorded, but the renames had not happened
            _commit(layout, kind, slide_id, token)
        # What may be left: a part staged again, after the commit, by a chunk task that Dask reran.
        shutil.rmtree(layout.table_staging(kind, slide_id), ignore_errors=True)


def _commit(layout: OutputLayout, kind: str, slide_id: str, token: str) -> None:
    final, aside = layout.table_folder(kind, slide_id), layout.replaced_tables(kind, slide_id)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by a crash after both renames
    replace_folder(layout.staged_parts(kind, slide_id, token), final, aside)


def recover_slide_tables(output_dir: str | Path, slide_id: str) -> None:
    """Before a run stages a slide's parts: put back a partition that a crash between a commit's two
    renames left moved aside, and drop whatever earlier runs staged and never committed."""
    layout = OutputLayout(output_dir)
    for kind in KINDS:
        final, aside = layout.table_folder(kind.name, slide_id), layout.replaced_tables(kind.name, slide_id)
        if aside.is_dir() and not final.exists():
            os.replace(aside, final)
            fsync_path(final.parent)
        shutil.rmtree(layout.table_staging(kind.name, slide_id), ignore_errors=True)


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
    """One kind's table across slides; `bbox` (xmin, ymin, xmax, ymax, level-0 px) uses the covering column.

    Rows come part file by part file, so a slide's rows are not in `instance_id` order. Read while
    a run commits a slide, it holds that slide's previous tables or its new ones (or, read in the
    instant between a commit's two renames, none).
    """
    layout = OutputLayout(output_dir)
    filters = ds.field("slide_id").isin(list(slide_ids)) if slide_ids is not None else None
    # Slide ids are text even when they look like numbers ("001" must not become 1).
    partitioning = ds.partitioning(pa.schema([("slide_id", pa.string())]), flavor="hive")
    for attempt in range(READ_TRIES):
        try:
            files = [str(path) for path in layout.table_files(kind)]
            if not files:
                raise FileNotFoundError(f"{layout.tables(kind)}: no {kind} table written")
            table = gpd.read_parquet(files, filters=filters, bbox=bbox, partitioning=partitioning)
            break
        except FileNotFoundError:  # a commit renamed a slide's files between listing and reading them
            if attempt == READ_TRIES - 1:
                raise
    table["slide_id"] = table["slide_id"].astype(str)
    return table[["slide_id"] + [c for c in table.columns if c not in ("slide_id", "bbox")]]


def table_batches(
    paths: Iterable[Path], columns: Sequence[str] = ("class_name", "centroid_x", "centroid_y", "geometry"),
) -> Iterator[pd.DataFrame]:
    """Table files (a slide's parts) in row batches, geometries decoded to shapely."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
            frame = batch.to_pandas()
            if "geometry" in frame:
                frame["geometry"] = shapely.from_wkb(frame["geometry"].to_numpy())
            yield frame


def class_counts(output_dir: str | Path, kind: str, slide_id: str) -> Counter[str]:
    """Rows per class name in a slide's committed table of a kind, reading only that column."""
    counts: Counter[str] = Counter()
    for path in OutputLayout(output_dir).table_files(kind, slide_id):
        column = pq.ParquetFile(path).read(columns=["class_name"]).column(0)
        for found in pc.value_counts(column).to_pylist():
            counts[found["values"]] += found["counts"]
    return counts
