"""A slide's part files of one kind read as one table: one schema for all, rows in blocks of fixed size."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

# Rows per block: a block of nuclei with their outlines is tens of MB and is copied once or twice on
# its way out, so this bounds the export's memory whatever the slide's size.
ROWS = 8192


def row_count(parts: list[Path]) -> int:
    """Rows in the parts, from their footers."""
    return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)


def unified_schema(parts: list[Path], columns: list[str]) -> pa.Schema:
    """One schema holding every part's columns: a part may type a column differently (all-null text as null)."""
    schemas = [pq.read_schema(part) for part in parts]
    return pa.unify_schemas([pa.schema([s.field(c) for c in columns]) for s in schemas], promote_options="permissive")


def blocks(parts: list[Path], schema: pa.Schema, rows: int = ROWS) -> Iterator[pa.Table]:
    """The parts' rows, in part order, as tables of `schema` of exactly `rows` rows (the last fewer).

    Parts hold from none to many rows; fixed blocks let each zarr chunk be written once, whole."""
    pending: list[pa.Table] = []
    held = 0
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=rows, columns=schema.names):
            pending.append(pa.Table.from_batches([batch]).select(schema.names).cast(schema))
            held += batch.num_rows
            while held >= rows:
                table = pa.concat_tables(pending).combine_chunks()
                yield table.slice(0, rows)
                pending, held = [table.slice(rows)], held - rows
    if held:
        yield pa.concat_tables(pending).combine_chunks()
