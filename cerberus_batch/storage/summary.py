"""The cohort summary: one row per slide with object counts, densities, tissue composition and readouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from cerberus_batch.storage.atomic import atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import class_counts
from cerberus_batch.vocabulary import OBJECTS, computed


COMPOSITION = "composition"  # the key of a slide's row holding its crossed counts' rows, until they are written apart


def slide_summary(
    output: str | Path, slide_id: str, tissue_mm2: float, tissue_types: Mapping[str, float], seconds: float,
    readouts: Mapping[str, Any], composition: list[dict[str, Any]], heads: Iterable[str],
) -> dict[str, Any]:
    """Counts per class of the slide's committed tables, densities per mm² of tissue (the tissue mask's
    area on the slide), the area of each tissue type (its cells', `tasks.composition.tissue_areas`) in mm²,
    the named readouts, and under COMPOSITION the slide's crossed counts. A kind the model's `heads` do not
    find has a null count and density (not computed is not none found)."""
    row: dict[str, Any] = {"slide_id": slide_id, "tissue_mm2": float(tissue_mm2), "postprocess_seconds": round(seconds, 3)}
    heads = tuple(heads)
    for kind in OBJECTS:
        if not computed(kind, heads):
            row[f"{kind.name}_count"] = row[f"{kind.name}_per_mm2"] = None
            continue
        counts = class_counts(output, kind.name, slide_id)
        count = sum(counts.values())
        row[f"{kind.name}_count"] = count
        row[f"{kind.name}_per_mm2"] = count / tissue_mm2 if tissue_mm2 else 0.0
        for name, n in sorted(counts.items()):
            row[count_column(kind.name, name)] = int(n)
    for name, mm2 in sorted(tissue_types.items()):
        row[f"tissue_{name}_mm2"] = mm2
    return {**row, **readouts, COMPOSITION: composition}


def count_column(kind: str, class_name: str) -> str:
    """The summary's column of a class's count."""
    return f"{kind}_{class_name}_count"


def summary_class_counts(row: Mapping[str, Any], kind: str, class_names: Sequence[str]) -> dict[str, int]:
    """A summary row's count of each of these classes of a kind (0 where the row has none)."""
    return {name: int(row.get(count_column(kind, name)) or 0) for name in class_names}


def write_cohort_summary(output: Path, rows: list[dict[str, Any]]) -> None:
    """The summary as Parquet and CSV, each replaced atomically. A class or tissue type a slide has none of
    is 0; a kind or tissue types its model did not compute, and readouts it cannot give, stay null."""
    frame = pd.DataFrame(rows)
    for kind in OBJECTS:
        total = f"{kind.name}_count"
        classes = [c for c in frame if c.startswith(f"{kind.name}_") and c.endswith("_count") and c != total]
        if total in frame:
            frame.loc[frame[total].notna(), classes] = frame.loc[frame[total].notna(), classes].fillna(0)
    areas = [c for c in frame if c.startswith("tissue_") and c.endswith("_mm2") and c != "tissue_mm2"]
    typed = frame[areas].notna().any(axis=1)
    frame.loc[typed, areas] = frame.loc[typed, areas].fillna(0)
    for target, write in zip(OutputLayout(output).summaries, (frame.to_parquet, frame.to_csv)):
        with atomic_path(target) as partial:
            write(partial, index=False)
