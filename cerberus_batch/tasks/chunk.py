"""Finishing a chunk: the objects each kind's method can finish inside one chunk's core, and fragments
of the rest for the slide reduction (`tasks.merge`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import geopandas as gpd

from cerberus_batch.grid import ChunkBox
from cerberus_batch.tasks.fragments import Fragments
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.windows import core, tissue_cells

if TYPE_CHECKING:
    from cerberus_batch.tasks.kinds import SlideKinds


@dataclass
class ChunkResult:
    """What one chunk task sends to the slide reduction."""

    box: ChunkBox  # the chunk
    tables: dict[str, gpd.GeoDataFrame]  # finished instances per kind
    fragments: dict[str, Fragments]  # components cut by (or, for glands and lumens, all within) the core


def chunk_instances(maps: Mapping[str, Any], chunk_box: ChunkBox, geometry: SlideGeometry, kinds: SlideKinds) -> ChunkResult:
    """Finish the objects of one chunk its kinds' methods can and report everything else as fragments."""
    tables, fragments = {}, {}
    tissue = tissue_cells(maps, kinds.tissue_classes)
    for kind in kinds.objects:
        if kind.prob_map not in maps:
            continue
        window = core(chunk_box, kind.downsample, maps[kind.prob_map].shape[1:])
        table, fragments[kind.name] = kind.method.chunk(maps, kind, window, geometry, tissue)
        if table is not None:
            tables[kind.name] = table
    return ChunkResult(ChunkBox(*chunk_box), tables, fragments)
