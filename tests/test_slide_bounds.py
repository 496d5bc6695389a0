"""Nothing outside the slide: maps, objects, tissue polygons and tissue areas stop at the slide's edge.

The map grid is the slide padded up to whole 144-px cells; what lies in that padding is no part of the slide.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import zarr
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.grid import CELL
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec
from cerberus_batch.pipeline.work import cohort_predictor
from cerberus_batch.quantisation import quantise
from cerberus_batch.slides import open_slide, plan_chunks, tissue_mask
from cerberus_batch.storage.tables import read_table
from cerberus_batch.storage.zarr_maps import map_arrays
from cerberus_batch.tasks.infer import predict_chunk
from conftest import mask_file
from helpers import run_ok, write_cohort

DEMO_A = Path(__file__).parent.parent / "configs" / "demo" / "slides" / "demo-a.svs"
OBJECTS = ("nuclei", "glands", "lumens")


def run(folder: Path, slide: dict, cluster, **sections) -> Path:
    return run_ok(write_cohort(folder, [slide], **sections), cluster)


def level0_box(path: Path) -> shapely.Polygon:
    with open_slide(path) as slide:
        return shapely.box(0, 0, *slide.info.dimensions)


def assert_on_slide(tables: dict[str, gpd.GeoDataFrame], slide: shapely.Polygon) -> None:
    for kind, table in tables.items():
        assert table.geometry.within(slide).all(), (kind, table.total_bounds, slide.bounds)


def mask_tissue_per_cell(mask: np.ndarray, downsample: int, shape: tuple[int, int]) -> np.ndarray:
    """Processing px of tissue per cell: the mask upsampled to processing px, only the slide's (h, w)."""
    h, w = shape
    tissue = mask[np.arange(h)[:, None] // downsample, np.arange(w)[None, :] // downsample]
    rows, cols = math.ceil(h / CELL), math.ceil(w / CELL)
    padded = np.zeros((rows * CELL, cols * CELL), bool)
    padded[:h, :w] = tissue
    return padded.reshape(rows, CELL, cols, CELL).sum(axis=(1, 3))


@pytest.fixture(scope="module")
def demo(cluster, tmp_path_factory) -> Path:
    """The demo cohort's settings on demo-a (4000 x 3200 level-0 px; 2000 x 1600 at 0.5 µm/px: 14 x 12 cells)."""
    return run(tmp_path_factory.mktemp("demo"), {"path": str(DEMO_A), "id": "demo-a"}, cluster,
               model={"kind": "stain", "heads": ["nuclei", "tissue"]},
               processing={"mpp": 0.5, "chunk": 1008, "tissue_mask": "auto"})


@pytest.mark.e2e
def test_demo_tissue_polygons_and_objects_lie_on_the_slide(demo):
    slide = level0_box(DEMO_A)
    tables = {kind: read_table(demo, kind) for kind in (*OBJECTS, "tissue")}
    assert len(tables["nuclei"]) > 500
    assert_on_slide(tables, slide)
    tissue = tables["tissue"]
    # The last row and column of cells overhang the slide (to 4032 x 3456); the polygon stops at its edge.
    assert tuple(tissue.total_bounds) == slide.bounds
    assert np.allclose(tissue["area_um2"], tissue.geometry.area * 0.25**2)  # level-0 px are 0.25 µm
    assert (tissue["area_px"] == tissue.geometry.area / 4).all()  # processing px are 2 x 2 level-0 px


@pytest.mark.e2e
def test_demo_tissue_area_is_the_mask_and_each_type_the_area_of_its_polygons(demo):
    mask = np.asarray(Image.open(demo / "masks" / "demo-a.png")) > 0
    assert mask.shape == (100, 125)  # automatic masks: 8 µm px, 16 processing px at 0.5 µm/px
    per_cell = mask_tissue_per_cell(mask, 16, (1600, 2000))
    expected_mm2 = per_cell.sum() * 0.5**2 / 1e6
    summary = pd.read_csv(demo / "summary.csv").iloc[0]
    report = json.loads((demo / "run_report.json").read_text())["slides"]["demo-a"]
    assert summary["tissue_mm2"] == pytest.approx(expected_mm2, rel=1e-12)
    assert report["tissue_mm2"] == pytest.approx(expected_mm2, rel=1e-12)
    assert summary["nuclei_per_mm2"] == pytest.approx(summary["nuclei_count"] / expected_mm2, rel=1e-12)
    # One area per tissue type everywhere: that of its cells on the slide, which its polygons cover.
    polygons = read_table(demo, "tissue").groupby("class_name")["area_um2"].sum() / 1e6
    group = zarr.open_group(demo / "maps" / "demo-a", mode="r")
    cells = map_arrays(group)["tissue_class"][:]
    on_slide = np.ones((1600, 2000))  # processing px of the slide (4000 x 3200 level-0 px at 0.25 µm)
    covered = np.pad(on_slide, ((0, cells.shape[0] * 144 - 1600), (0, cells.shape[1] * 144 - 2000)))
    cell_px = covered.reshape(cells.shape[0], 144, cells.shape[1], 144).sum(axis=(1, 3))
    background = cell_px[(cells == 0) & (per_cell > 0)].sum() * 0.5**2 / 1e6
    columns = {f"tissue_{name}_mm2": mm2 for name, mm2 in polygons.items()} | (
        {"tissue_background_mm2": background} if background else {})
    assert set(columns) == {c for c in summary.index if c.startswith("tissue_") and c.endswith("_mm2") and c != "tissue_mm2"}
    for column, mm2 in columns.items():
        assert summary[column] == pytest.approx(mm2, rel=1e-9), column


def test_plan_tissue_area_counts_only_the_slide(cmu_slide):
    """CMU-1-Small-Region, 2220 x 2967 px read natively at 0.499 µm/px: 16-px mask pixels overhang it."""
    with open_slide(cmu_slide) as slide:
        view = slide.at_mpp(0.5)
        mpp_x, mpp_y = view.mpp_xy
        everything = plan_chunks(view, tissue_mask(view, "none"))
        assert everything.tissue_mm2 == pytest.approx(2967 * 2220 * mpp_x * mpp_y / 1e6, rel=1e-12)
        auto = tissue_mask(view, "auto")
        assert auto.downsample == 16 and auto.array.shape == (186, 139)
        assert auto.array[-1].any()  # the last mask row, 9 px of it past the slide, holds tissue
        plan = plan_chunks(view, auto)
    per_cell = mask_tissue_per_cell(auto.array, 16, (2967, 2220))
    assert plan.tissue_mm2 == pytest.approx(per_cell.sum() * mpp_x * mpp_y / 1e6, rel=1e-12)
    np.testing.assert_array_equal(plan.tissue_cells(), per_cell)


@pytest.mark.e2e
def test_cerberus_maps_are_background_past_the_slide(cmu_slide, parity_model_dir, cluster, tmp_path):
    """Deterministic-weights Cerberus on the bottom-right corner of CMU-1-Small-Region, whose last cells overhang it."""
    mask = np.zeros((297, 222), np.uint8)  # the slide at 1/10 scale
    mask[-12:, -12:] = 255
    Image.fromarray(mask).save(mask_file(tmp_path))
    output = run(tmp_path, {"path": str(cmu_slide), "id": "cmu", "mask": "masks/mask.png"}, cluster,
                 model={"kind": "cerberus", "weights": str(parity_model_dir)},
                 processing={"chunk": 432, "tile": 432, "tissue_mask": "given"})
    h, w = 2967, 2220  # processing px: the slide, read natively
    maps = map_arrays(zarr.open_group(output / "maps" / "cmu", mode="r"))
    assert maps["nuclei_prob"].shape[1:] == (21 * CELL, 16 * CELL)
    corner = (2160, 2880, 144, 144)  # the last cell: 60 x 87 px of it on the slide
    raw = predict_chunk(open_slide(cmu_slide).at_mpp(0.5).read,
                        cohort_predictor(ModelSpec(kind="cerberus", weights=parity_model_dir), ProcessingSpec(tile=432)),
                        corner)
    past = np.zeros((144, 144), bool)
    past[h - corner[1] :, :] = past[:, w - corner[0] :] = True
    pixel_maps = (("Nuclei-INST", "nuclei_prob", 1), ("Gland-INST", "gland_prob", 2), ("Lumen-INST", "lumen_prob", 2))
    for head, name, down in pixel_maps:
        assert (quantise(raw[head])[:, past] > 0).any(), f"the model itself predicts {head} past the slide"
        stored = maps[name][:]
        assert not stored[:, -(-h // down) :].any() and not stored[:, :, -(-w // down) :].any(), name
        assert stored[:, : h // down, : w // down].any(), name
    for name, down in (("nuclei_class", 1), ("gland_class", 2)):
        stored = maps[name][:]
        assert not stored[-(-h // down) :].any() and not stored[:, -(-w // down) :].any(), name
    tables = {kind: read_table(output, kind) for kind in (*OBJECTS, "tissue")}
    assert len(tables["nuclei"]) and len(tables["tissue"])
    assert_on_slide(tables, level0_box(cmu_slide))
    # The gland at the corner, dilated up to the slide's edge, counts no pixel past it: only the last
    # half-resolution row, half on the slide (2967 is odd), counts in full (level-0 px are processing px here).
    glands = tables["glands"]
    assert len(glands) == 1 and tuple(glands.total_bounds[2:]) == (w, h)
    excess = glands["area_px"] - glands.geometry.area
    assert ((excess >= 0) & (excess <= glands.geometry.bounds["maxx"] - glands.geometry.bounds["minx"])).all()


def test_tile_mode_outlines_stop_at_the_image_edge(cmu_slide, tmp_path):
    """An image at 0.25 µm/px whose 0.5 µm/px grid ends halfway into a pixel (1403 x 1003 → 702 x 502 px)."""
    crop = open_slide(cmu_slide).read_level(0, 800, 1200, 702, 502)
    big = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)[:1003, :1403]
    (tmp_path / "in").mkdir()
    Image.fromarray(big).save(tmp_path / "in" / "odd.png")
    result = CliRunner().invoke(main, ["tile", "--model-kind", "stain", "--input-dir", str(tmp_path / "in"),
                                       "--output-dir", str(tmp_path / "out"), "--mpp", "0.25"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "odd"
    group = zarr.open_group(folder / "maps.zarr", mode="r")
    assert group.attrs["image_shape"] == [502, 702]
    stored = map_arrays(group)["nuclei_prob"][:]
    assert not stored[:, 502:].any() and not stored[:, :, 702:].any()
    image = shapely.box(0, 0, 1403, 1003)
    tables = {kind: gpd.read_parquet(folder / f"{kind}.parquet") for kind in OBJECTS}
    assert len(tables["nuclei"]) > 100
    assert_on_slide(tables, image)
    # Nuclei on the grid's last pixels, which cover 1402..1404 and 1002..1004, are cut at the image's edge.
    reach = tables["nuclei"].total_bounds
    assert reach[2] == 1403 and reach[3] == 1003
