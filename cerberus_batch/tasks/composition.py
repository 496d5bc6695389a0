"""Objects crossed with the tissue they lie in: one slide's composition rows and its named readouts.

An object lies in the tissue of the CELL-px cell holding its centroid (its table's `tissue_name`), so
the area a density divides by is that of the cells of the type: the tissue polygons' area, the cells
cut to the slide. Background cells count where the mask puts tissue (elsewhere the model never looked).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from cerberus_batch.grid import CELL
from cerberus_batch.vocabulary import LYMPHOCYTE, NUCLEI, PLASMA, STROMA, TUMOUR

# The readout columns of the summary, in order; each is null where its tissue is absent.
TUMOUR_STROMA_RATIO = "tumour_stroma_ratio"
STROMAL_LYMPHOCYTES = "stromal_lymphocytes_per_mm2"
INTRAEPITHELIAL_LYMPHOCYTES = "intraepithelial_lymphocytes_per_mm2"
FRONT_LYMPHOCYTES = "front_lymphocytes_per_mm2"
FRONT_MM2 = "front_stroma_mm2"
READOUTS = (TUMOUR_STROMA_RATIO, STROMAL_LYMPHOCYTES, INTRAEPITHELIAL_LYMPHOCYTES, FRONT_LYMPHOCYTES, FRONT_MM2)

Crossed = Mapping[tuple[Any, str, str], int]  # (tissue_name or None, kind, class_name) -> objects


def cell_mm2(shape: tuple[int, int], extent: tuple[float, float], mpp: float) -> np.ndarray:
    """Area in mm² of each cell of a (rows, cols) grid inside the slide, which ends at `extent`
    (x, y processing px): the last row and column of cells overhang it."""
    heights = np.clip(extent[1] - np.arange(shape[0]) * CELL, 0, CELL)
    widths = np.clip(extent[0] - np.arange(shape[1]) * CELL, 0, CELL)
    return np.outer(heights, widths) * mpp**2 / 1e6


def tissue_areas(tissue_class: np.ndarray, tissue_px: np.ndarray, areas: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """mm² of each tissue type present: its cells' `areas`; background cells only where the mask
    (`tissue_px`, mask tissue per cell) has tissue."""
    seen = (tissue_class > 0) | (tissue_px > 0)
    mm2 = np.bincount(tissue_class[seen].ravel(), weights=areas[seen].ravel(), minlength=len(names))
    return {_name(names, i): float(mm2[i]) for i in np.flatnonzero(mm2)}


def front_cells(tissue_class: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Stroma cells within one cell (8 neighbours) of abnormal epithelium: the invasive front."""
    if TUMOUR not in names or STROMA not in names:
        return np.zeros(tissue_class.shape, bool)
    tumour = ndimage.binary_dilation(tissue_class == names.index(TUMOUR), np.ones((3, 3), bool))
    return tumour & (tissue_class == names.index(STROMA))


def composition_rows(slide_id: str, crossed: Crossed, areas: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per (tissue, kind, class) with objects: the count, its tissue's mm² and the density
    (null where the tissue is unknown or has no area)."""
    rows = []
    for (tissue, kind, name), count in sorted(crossed.items(), key=lambda item: tuple(str(v) for v in item[0])):
        mm2 = areas.get(tissue) if tissue is not None else None
        rows.append({"slide_id": slide_id, "tissue_name": tissue, "kind": kind, "class_name": name, "count": int(count),
                     "tissue_mm2": mm2, "per_mm2": count / mm2 if mm2 else None})
    return rows


def readouts(crossed: Crossed, areas: Mapping[str, float], front_mm2: float | None, front_lymphocytes: int) -> dict[str, Any]:
    """The named readouts of one slide (README): each null where the tissue it divides by is absent; the
    front's area null without a tissue map (`front_mm2` None), as nothing measured it."""
    stroma, tumour = areas.get(STROMA, 0.0), areas.get(TUMOUR, 0.0)

    def nuclei(tissue: str, *classes: str) -> int:
        return sum(crossed.get((tissue, NUCLEI.name, name), 0) for name in classes)

    return {
        TUMOUR_STROMA_RATIO: stroma / (stroma + tumour) if stroma + tumour else None,
        STROMAL_LYMPHOCYTES: nuclei(STROMA, LYMPHOCYTE, PLASMA) / stroma if stroma else None,
        INTRAEPITHELIAL_LYMPHOCYTES: nuclei(TUMOUR, LYMPHOCYTE) / tumour if tumour else None,
        FRONT_LYMPHOCYTES: front_lymphocytes / front_mm2 if front_mm2 else None,
        FRONT_MM2: front_mm2,
    }


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
