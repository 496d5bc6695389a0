"""The cohort summary: one row per slide with object counts, densities and tissue composition."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import geopandas as gpd
import pandas as pd

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.vocabulary import OBJECTS


def slide_summary(
    slide_id: str, tables: Mapping[str, gpd.GeoDataFrame], tissue_mm2: float, tissue_types: Mapping[str, float],
    seconds: float,
) -> dict[str, Any]:
    """Counts per class, densities per mm² of tissue (the tissue mask's area on the slide) and that
    area split by tissue type (`tasks.instances.tissue_by_type`), in mm²."""
    row: dict[str, Any] = {"slide_id": slide_id, "tissue_mm2": float(tissue_mm2), "postprocess_seconds": round(seconds, 3)}
    for kind in OBJECTS:
        table = tables.get(kind.name)
        count = 0 if table is None else len(table)
        row[f"{kind.name}_count"] = count
        row[f"{kind.name}_per_mm2"] = count / tissue_mm2 if tissue_mm2 else 0.0
        if table is not None and count:
            for name, n in table["class_name"].value_counts().sort_index().items():
                row[f"{kind.name}_{name}_count"] = int(n)
    for name, mm2 in sorted(tissue_types.items()):
        row[f"tissue_{name}_mm2"] = mm2
    return row


def write_cohort_summary(output: Path, rows: list[dict[str, Any]]) -> None:
    """The summary as Parquet and CSV, each replaced atomically; missing counts are 0."""
    frame = pd.DataFrame(rows).fillna(0)
    for target, write in zip(OutputLayout(output).summaries, (frame.to_parquet, frame.to_csv)):
        with atomic_path(target) as partial:
            write(partial, index=False)
