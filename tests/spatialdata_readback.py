"""Run by tests/test_spatialdata_export.py in a venv that has spatialdata: read a store as its users
would and print, as JSON, what the test checks against the output folder's own files.

    python spatialdata_readback.py STORE.zarr
"""

from __future__ import annotations

import json
import sys

import numpy as np
import spatialdata
from spatialdata.transformations import get_transformation

CHECKED = 300  # nuclei whose centroids are located on the map


def scales(element) -> list:
    """A raster's levels as DataArrays: a DataTree's scales, or a one-level DataArray itself."""
    return [node["image"] for node in element.children.values()] if hasattr(element, "children") else [element]


def main(store: str) -> None:
    sdata = spatialdata.read_zarr(store)
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    shapes, joined_table = spatialdata.join_spatialelement_table(
        sdata, spatial_element_names=attrs["region"], table_name="table", how="inner")
    nuclei = sdata.shapes["nuclei"]
    image = sdata.images["nuclei_prob"]
    level0 = scales(image)[0]
    # level-0 px -> the map's px, through the store's own transformation
    to_global = get_transformation(image, to_coordinate_system="global")
    matrix = np.linalg.inv(to_global.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
    rows = table.obs.iloc[:CHECKED]
    points = np.column_stack([rows["centroid_x"], rows["centroid_y"], np.ones(len(rows))])
    px = np.floor(points @ matrix.T)[:, :2].astype(int)
    values = np.asarray(level0.values)[:, px[:, 1], px[:, 0]].T  # (nuclei, channels); a demo slide's map is small
    facts = {
        "images": sorted(sdata.images), "labels": sorted(sdata.labels), "shapes": {k: len(v) for k, v in sdata.shapes.items()},
        "tables": sorted(sdata.tables), "table_rows": table.n_obs, "table_attrs": {k: attrs[k] for k in ("region", "region_key", "instance_key")},
        "obs_columns": list(table.obs.columns), "obs_dtypes": {k: str(v) for k, v in table.obs.dtypes.items()},
        "joined_rows": len(joined_table.obs), "joined_shapes": len(shapes["nuclei"]),
        "shapes_index_unique": bool(nuclei.index.is_unique),
        "image_scales": {name: [list(a.shape) for a in scales(e)] for name, e in sdata.images.items()},
        "label_scales": {name: [list(a.shape) for a in scales(e)] for name, e in sdata.labels.items()},
        "channels": {name: [str(c) for c in scales(e)[0].coords["c"].values] for name, e in sdata.images.items()},
        "coordinate_systems": sorted(sdata.coordinate_systems),
        "checked": {
            "instance_id": rows["instance_id"].astype(int).tolist(), "class_name": rows["class_name"].astype(str).tolist(),
            "tissue_name": rows["tissue_name"].astype(object).where(rows["tissue_name"].notna(), None).tolist()
            if "tissue_name" in rows else None,
            "px": px.tolist(), "values": values.tolist(),
            "spatial": table.obsm["spatial"][:CHECKED].tolist(),
        },
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1])
