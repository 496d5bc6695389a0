"""The slide reduction: all instance tables of a slide from its chunk results, identical to
post-processing the whole slide at once (`tasks.whole`).

Every result depends only on one connected foreground component of its kind (see `postprocess`), so:

- a chunk task finishes the nuclei whose support (8-connected mask component) does not touch its
  core's edges, and reports the others as border fragments (`tasks.chunk`);
- the nuclei on chunk borders are joined across them and segmented once each (`tasks.border`);
- glands and lumens are few: chunks report their thresholded components as fragments, and the
  reduction paints each kept component from its own crop (`tasks.regions`).

Windows are read by slicing the maps; memory is bounded by window size, not slide size.
Given the slide's level-0 bounds, every outline is cut to the slide (`instances.cut_to_slide`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import geopandas as gpd
import numpy as np

from cerberus_batch.tasks.chunk import ChunkResult
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import TissueCells
from cerberus_batch.tasks.regions import PaintedRegions, region_tables, with_counts
from cerberus_batch.tasks.windows import tissue_cells, tissue_regions

if TYPE_CHECKING:
    from cerberus_batch.tasks.kinds import SlideKinds


@dataclass
class Reduction:
    """One slide's reduction as its kinds' methods fill it: finished tables, and the regions still to paint."""

    maps: Mapping[str, Any]
    chunk_results: Sequence[ChunkResult]
    geometry: SlideGeometry
    tissue: TissueCells | None
    finished: Mapping[str, np.ndarray]  # first pixels of the nuclei border tasks finished, per kind
    tables: dict[str, gpd.GeoDataFrame] = field(default_factory=dict)
    regions: dict[str, PaintedRegions] = field(default_factory=dict)


def merge_slide(
    maps: Mapping[str, Any], chunk_results: Sequence[ChunkResult], geometry: SlideGeometry, kinds: SlideKinds,
    finished: Mapping[str, np.ndarray] | None = None,
) -> dict[str, gpd.GeoDataFrame]:
    """All instance tables of a slide from its chunk results (any order), plus tissue regions.

    Nuclei finished in the chunks are included as far as the results still carry them (a chunk
    task that stored its own table part sends fragments only), and the nuclei on chunk borders,
    except those `finished` already (by border tasks, which staged them as their own parts).
    """
    tissue = tissue_cells(maps, kinds.tissue_classes)
    reduction = Reduction(maps, chunk_results, geometry, tissue, finished or {})
    tables = kinds.fill_tables(maps, reduction.tables, lambda kind: kind.method.reduce(reduction, kind))
    found, contained = region_tables(maps, kinds.objects, reduction.regions, geometry, tissue)
    tables.update(found)
    tables.update(with_counts(tables, kinds.objects, contained))
    tables["tissue"] = tissue_regions(maps, kinds.tissue_classes, geometry)
    return tables
