"""The cohort's crossed counts: objects per slide, tissue type, kind and class (`OUT/composition.parquet`, `.csv`).

Counted from a slide's committed tables, reading only the columns each count needs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.vocabulary import OBJECTS

COLUMNS = ("slide_id", "tissue_name", "kind", "class_name", "count", "tissue_mm2", "per_mm2")
TISSUE_NAME = "tissue_name"  # the tables' column naming the tissue an object lies in


def crossed_counts(output: str | Path, slide_id: str) -> Counter[tuple[Any, str, str]]:
    """Objects per (tissue_name, kind, class_name) in a slide's committed tables; the tissue is None where
    the tables hold none (no tissue head, or tables written before objects knew their tissue)."""
    counts: Counter[tuple[Any, str, str]] = Counter()
    for kind in OBJECTS:
        for path in OutputLayout(output).table_files(kind.name, slide_id):
            present = set(pq.ParquetFile(path).schema_arrow.names)
            table = pq.read_table(path, columns=[c for c in ("class_name", TISSUE_NAME) if c in present])
            if TISSUE_NAME not in present:
                table = table.append_column(TISSUE_NAME, pa.nulls(len(table), pa.string()))
            for found in table.group_by(["class_name", TISSUE_NAME]).aggregate([([], "count_all")]).to_pylist():
                counts[(found[TISSUE_NAME], kind.name, found["class_name"])] += found["count_all"]
    return counts


def class_centroids(output: str | Path, kind: str, slide_id: str, class_name: str, tissue_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 centroids (x, y) of a slide's objects of one class lying in one tissue type."""
    xs, ys = [np.zeros(0)], [np.zeros(0)]
    for path in OutputLayout(output).table_files(kind, slide_id):
        if TISSUE_NAME not in pq.ParquetFile(path).schema_arrow.names:
            continue
        wanted = (pc.field("class_name") == class_name) & (pc.field(TISSUE_NAME) == tissue_name)
        table = pq.read_table(path, columns=["centroid_x", "centroid_y"], filters=wanted)
        xs.append(table["centroid_x"].to_numpy())
        ys.append(table["centroid_y"].to_numpy())
    return np.concatenate(xs), np.concatenate(ys)


def write_cohort_composition(output: Path, rows: list[dict[str, Any]]) -> None:
    """The crossed counts as Parquet and CSV, each replaced atomically; unknown areas and densities stay null."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(
        {"slide_id": "str", "tissue_name": "str", "kind": "str", "class_name": "str", "count": "int64",
         "tissue_mm2": "float64", "per_mm2": "float64"})
    for target, write in zip(OutputLayout(output).compositions, (frame.to_parquet, frame.to_csv)):
        with atomic_path(target) as partial:
            write(partial, index=False)
