"""Objects crossed with the tissue type of the cell holding their centroid: composition rows, tissue areas
and named readouts equal their definitions, computed here independently, for any chunking."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cerberus_batch.pipeline.crossed import slide_crossed
from cerberus_batch.slides import Transform
from cerberus_batch.storage.summary import slide_summary
from cerberus_batch.storage.tables import write_slide_tables
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.merge import merge_slide
from cerberus_batch.testing.maps import synthetic_maps
from cerberus_batch.vocabulary import HEAD_MAPS, TISSUE

HEIGHT, WIDTH = 2160, 2304  # processing px: 15 x 16 cells; chunks of 1008 and 2016 px cut it differently
EXTENT = (WIDTH - 100, HEIGHT - 60)  # the slide ends inside its last cells (processing px x, y)
TRANSFORM = Transform(2.0, 2.0, 7.0, 3.0)
MPP = 0.5
NAMES = TISSUE.classes
CELL_MM2 = (144 * MPP) ** 2 / 1e6


KINDS = SlideKinds.for_model()


def geometry(slide_id: str) -> SlideGeometry:
    return SlideGeometry(slide_id, TRANSFORM, MPP, TRANSFORM.to_level0(*EXTENT))


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    return synthetic_maps(HEIGHT, WIDTH, seed=5)


@pytest.fixture(scope="module")
def mask_px(maps) -> np.ndarray:
    """Mask tissue per cell: none in a band of cells, so some background cells hold no tissue."""
    px = np.full(maps["tissue_class"].shape, 144.0 * 144)
    px[:, :3] = 0
    return px


def boxes(size: int) -> list[tuple[int, int, int, int]]:
    return [(x, y, min(size, WIDTH - x), min(size, HEIGHT - y)) for y in range(0, HEIGHT, size) for x in range(0, WIDTH, size)]


@pytest.fixture(scope="module", params=[1008, 2016, None], ids=["chunk-1008", "chunk-2016", "whole-slide"])
def crossed(request, maps, mask_px, tmp_path_factory):
    out = tmp_path_factory.mktemp("crossed")
    slide = f"s{request.param}"
    results = [chunk_instances(maps, box, geometry(slide), KINDS) for box in boxes(request.param or max(HEIGHT, WIDTH))]
    tables = merge_slide(maps, results, geometry(slide), KINDS)
    write_slide_tables(out, slide, tables)
    areas, readouts, rows = slide_crossed(out, maps, geometry(slide), NAMES, mask_px)
    summary = slide_summary(out, slide, 1.0, areas, 0.0, readouts, rows, HEAD_MAPS)
    return tables, areas, readouts, rows, summary


def cell_of(table) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the cell holding each object's centroid, from its level-0 centroid."""
    x = (table["centroid_x"].to_numpy() - 7.0) / 2.0
    y = (table["centroid_y"].to_numpy() - 3.0) / 2.0
    return (y // 144).astype(int), (x // 144).astype(int)


def on_slide_cell_mm2() -> np.ndarray:
    rows, cols = HEIGHT // 144, WIDTH // 144
    area = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            h = min(144, max(0, EXTENT[1] - r * 144))
            w = min(144, max(0, EXTENT[0] - c * 144))
            area[r, c] = h * w * MPP**2 / 1e6
    return area


def expected_areas(maps, mask_px) -> dict[str, float]:
    cells, area = maps["tissue_class"], on_slide_cell_mm2()
    found: Counter[str] = Counter()
    for (r, c), value in np.ndenumerate(cells):
        if value or mask_px[r, c]:
            found[NAMES[value]] += area[r, c]
    return dict(found)


def test_every_count_is_the_objects_whose_centroid_cell_has_that_tissue(crossed, maps) -> None:
    tables, _, _, rows, _ = crossed
    expected: Counter = Counter()
    for kind in ("nuclei", "glands", "lumens"):
        r, c = cell_of(tables[kind])
        for name, tissue in zip(tables[kind]["class_name"], maps["tissue_class"][r, c]):
            expected[(NAMES[tissue], kind, name)] += 1
    assert {(row["tissue_name"], row["kind"], row["class_name"]): row["count"] for row in rows} == dict(expected)
    assert {row["kind"] for row in rows} == {"nuclei", "glands", "lumens"}
    assert len({row["tissue_name"] for row in rows}) == len(NAMES), "every tissue type holds objects"


def test_areas_are_the_typed_cells_on_the_slide_and_densities_divide_by_them(crossed, maps, mask_px) -> None:
    _, areas, _, rows, summary = crossed
    expected = expected_areas(maps, mask_px)
    assert areas == pytest.approx(expected, rel=1e-12)
    assert areas["background"] < (maps["tissue_class"] == 0).sum() * CELL_MM2, "background cells without mask tissue left out"
    tissue = merge_slide(maps, [], geometry("polygons"), KINDS)["tissue"]  # the polygons of the typed cells
    for name, mm2 in (tissue.groupby("class_name")["area_um2"].sum() / 1e6).items():
        assert areas[name] == pytest.approx(mm2, rel=1e-12), name
        assert summary[f"tissue_{name}_mm2"] == pytest.approx(mm2, rel=1e-12)
    for row in rows:
        assert row["tissue_mm2"] == pytest.approx(expected[row["tissue_name"]], rel=1e-12)
        assert row["per_mm2"] == pytest.approx(row["count"] / expected[row["tissue_name"]], rel=1e-12)


def test_rows_add_up_to_the_summary(crossed) -> None:
    tables, _, _, rows, summary = crossed
    for kind in ("nuclei", "glands", "lumens"):
        assert sum(r["count"] for r in rows if r["kind"] == kind) == summary[f"{kind}_count"] == len(tables[kind])
        for name in set(tables[kind]["class_name"]):
            assert sum(r["count"] for r in rows if r["kind"] == kind and r["class_name"] == name) == summary[f"{kind}_{name}_count"]


def test_readouts_equal_their_definitions(crossed, maps, mask_px) -> None:
    tables, _, readouts, _, summary = crossed
    cells, area = maps["tissue_class"], on_slide_cell_mm2()
    stroma, tumour = NAMES.index("stroma"), NAMES.index("abnormal_epi")
    stroma_mm2, tumour_mm2 = area[cells == stroma].sum(), area[cells == tumour].sum()
    nuclei = tables["nuclei"]
    r, c = cell_of(nuclei)
    in_stroma, in_tumour = cells[r, c] == stroma, cells[r, c] == tumour
    lymphocyte, plasma = (nuclei["class_name"] == "lymphocyte").to_numpy(), (nuclei["class_name"] == "plasma").to_numpy()
    front = np.zeros(cells.shape, bool)  # stroma cells with abnormal epithelium among their 8 neighbours
    for (i, j), value in np.ndenumerate(cells):
        near = cells[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
        front[i, j] = value == stroma and (near == tumour).any()
    assert 0 < front.sum() < (cells == stroma).sum()
    expected = {
        "tumour_stroma_ratio": stroma_mm2 / (stroma_mm2 + tumour_mm2),
        "stromal_lymphocytes_per_mm2": (in_stroma & (lymphocyte | plasma)).sum() / stroma_mm2,
        "intraepithelial_lymphocytes_per_mm2": (in_tumour & lymphocyte).sum() / tumour_mm2,
        "front_lymphocytes_per_mm2": (front[r, c] & lymphocyte).sum() / area[front].sum(),
        "front_stroma_mm2": area[front].sum(),
    }
    assert readouts == pytest.approx(expected, rel=1e-12)
    assert {k: summary[k] for k in expected} == pytest.approx(expected, rel=1e-12)


def test_a_readout_whose_tissue_is_absent_is_null(maps, mask_px, tmp_path) -> None:
    no_tumour = dict(maps, tissue_class=np.where(np.isin(maps["tissue_class"], (1, 5)), 2, maps["tissue_class"]).astype(np.uint8))
    parts = [chunk_instances(no_tumour, b, geometry("n"), KINDS) for b in boxes(2016)]
    write_slide_tables(tmp_path, "n", merge_slide(no_tumour, parts, geometry("n"), KINDS))
    _, readouts, rows = slide_crossed(tmp_path, no_tumour, geometry("n"), NAMES, mask_px)[0:3]
    assert readouts == {"tumour_stroma_ratio": None, "stromal_lymphocytes_per_mm2": None,
                        "intraepithelial_lymphocytes_per_mm2": None, "front_lymphocytes_per_mm2": None,
                        "front_stroma_mm2": 0.0}
    without = {k: v for k, v in maps.items() if k != "tissue_class"}
    parts = [chunk_instances(without, b, geometry("t"), KINDS) for b in boxes(2016)]
    write_slide_tables(tmp_path, "t", merge_slide(without, parts, geometry("t"), KINDS))
    areas, readouts, rows = slide_crossed(tmp_path, without, geometry("t"), NAMES, mask_px)
    assert areas == {} and all(v is None for v in readouts.values()), "no tissue map: not even the front's area is 0"
    assert rows and all(r["tissue_name"] is None and r["tissue_mm2"] is None and r["per_mm2"] is None for r in rows)
