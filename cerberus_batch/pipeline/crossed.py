"""A slide's objects crossed with its tissue types, once its tables are committed: the area of each
type, the composition rows and the named readouts (`tasks.composition`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cerberus_batch.storage.composition import class_centroids, crossed_counts
from cerberus_batch.tasks.composition import cell_mm2, composition_rows, front_cells, readouts, tissue_areas
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import TissueCells
from cerberus_batch.vocabulary import LYMPHOCYTE, NUCLEI, STROMA, TISSUE


def slide_crossed(
    output: Path, maps: Mapping[str, Any], geometry: SlideGeometry, names: Sequence[str], tissue_px: np.ndarray,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    """(mm² per tissue type, readouts, composition rows) of a slide whose tables are committed; `names`
    its tissue types, `tissue_px` the mask's tissue per cell (`ChunkPlan.tissue_cells`)."""
    slide_id, transform = geometry.slide_id, geometry.transform
    crossed = crossed_counts(output, slide_id)
    if TISSUE.class_map.name not in maps:
        return {}, readouts(crossed, {}, None, 0), composition_rows(slide_id, crossed, {})
    cells = np.asarray(maps[TISSUE.class_map.name][:])
    area = cell_mm2(cells.shape, transform.from_level0(*geometry.bounds), geometry.mpp)
    areas = tissue_areas(cells, tissue_px, area, names)
    front = front_cells(cells, names)
    x, y = transform.from_level0(*class_centroids(output, NUCLEI.name, slide_id, LYMPHOCYTE, STROMA))
    # Only lymphocytes whose table says stroma count: the round trip through level-0 px must not move one off it.
    in_front = int(TissueCells(front, names).at(x, y).sum())
    return areas, readouts(crossed, areas, float(area[front].sum()), in_front), composition_rows(slide_id, crossed, areas)

