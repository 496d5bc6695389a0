"""The whole-slide path: post-processing straight on the full maps, in memory. Tile mode takes it,
and it is the reference the chunked path (`tasks.chunk`, `tasks.border`, `tasks.merge`) must equal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import geopandas as gpd
import numpy as np

from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import TissueCells
from cerberus_batch.tasks.regions import with_counts
from cerberus_batch.tasks.windows import tissue_cells, tissue_regions

if TYPE_CHECKING:
    from cerberus_batch.tasks.kinds import SlideKinds


@dataclass
class WholeSlide:
    """One slide's whole-map post-processing as its kinds' methods fill it."""

    maps: Mapping[str, Any]
    geometry: SlideGeometry
    tissue: TissueCells | None
    tables: dict[str, gpd.GeoDataFrame] = field(default_factory=dict)
    labelled: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> its label map, for kinds inside it
    contained: dict[str, np.ndarray] = field(default_factory=dict)  # container kind -> its instance_id per contained object


def slide_instances(maps: Mapping[str, Any], geometry: SlideGeometry, kinds: SlideKinds) -> dict[str, gpd.GeoDataFrame]:
    """All instance tables of a slide, plus tissue regions, from its full maps."""
    whole = WholeSlide(maps, geometry, tissue_cells(maps, kinds.tissue_classes))
    tables = kinds.fill_tables(maps, whole.tables, lambda kind: kind.method.whole(whole, kind))
    tables.update(with_counts(tables, kinds.objects, whole.contained))
    tables["tissue"] = tissue_regions(maps, kinds.tissue_classes, geometry)
    return tables
