"""SpatialData export: one slide's maps, objects and nuclei table as a store `spatialdata.read_zarr` loads.

Written with zarr and pyarrow alone (`spatialdata` pins older dask, `anndata` older pandas): `ngff`
holds the format's vocabulary, `images` the maps, `shapes` the object tables, `table` the nuclei's
AnnData table. Everything lies in one coordinate system, level-0 px (`ngff.COORDINATES`).
"""

from __future__ import annotations

from pathlib import Path

from cerberus_batch import __version__
from cerberus_batch.storage.atomic import SOFTWARE, atomic_path
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.spatialdata.images import write_rasters
from cerberus_batch.storage.spatialdata.ngff import CONTAINER_VERSION, COORDINATES, write_group
from cerberus_batch.storage.spatialdata.parts import row_count
from cerberus_batch.storage.spatialdata.shapes import write_shapes
from cerberus_batch.storage.spatialdata.table import write_table
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.vocabulary import KINDS, NUCLEI, computed

TABLE = "table"  # the AnnData table's element name, the one SpatialData tools look for first


def write_spatialdata(output: str | Path, slide_id: str, target: str | Path) -> dict[str, int]:
    """Write the slide's SpatialData store at `target`; returns the rows of each shapes element, by kind.

    Kinds whose head the model did not run are left out, and so are kinds with no objects: SpatialData
    refuses a store holding an empty shapes element (the count says 0). The store appears whole or not
    at all. Raises FileNotFoundError when the slide has no tables.
    """
    layout = OutputLayout(output)
    maps = layout.maps(slide_id)
    heads = open_slide_maps(maps).attrs["heads"] if maps.is_dir() else None
    parts = {kind.name: files for kind in KINDS
             if (files := layout.table_files(kind.name, slide_id)) and (heads is None or computed(kind, heads))}
    if not parts:
        raise FileNotFoundError(f"{layout.tables('*')}: no tables for slide {slide_id!r}")
    counts = {kind: row_count(files) for kind, files in parts.items()}
    with atomic_path(Path(target)) as store:
        write_group(store, {
            "spatialdata_attrs": {"version": CONTAINER_VERSION}, "software": f"{SOFTWARE} {__version__}",
            "slide_id": slide_id, "coordinate_system": {COORDINATES: "level-0 px of the slide, x right, y down"},
        })
        if maps.is_dir():
            write_rasters(maps, store)
        write_group(store / "shapes", {})
        for kind, files in parts.items():
            if counts[kind]:
                write_shapes(files, store / "shapes" / kind)
        write_group(store / "tables", {})
        if counts.get(NUCLEI.name):
            write_table(parts[NUCLEI.name], store / "tables" / TABLE, region=NUCLEI.name)
    return counts
