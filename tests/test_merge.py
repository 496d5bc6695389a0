"""Chunked instances (chunk tasks + slide reduction) equal the whole-slide post-processing exactly."""

from __future__ import annotations

import random
from dataclasses import replace

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import zarr

from cerberus_batch.slides import Transform
from cerberus_batch.tasks import border
from cerberus_batch.tasks.border import border_nuclei, border_shares
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds, cerberus_kinds
from cerberus_batch.tasks.merge import merge_slide
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.tasks.windows import read_windows
from cerberus_batch.testing.maps import synthetic_maps

HEIGHT, WIDTH = 1152, 1584  # processing px: 8 × 11 cells
GEOMETRY = SlideGeometry("slide-1", Transform(2.0, 2.0, 7.0, 3.0), 0.5)
KINDS = SlideKinds.for_model()


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    return synthetic_maps(HEIGHT, WIDTH, seed=11)


@pytest.fixture(scope="module")
def whole(maps):
    return slide_instances(maps, GEOMETRY, KINDS)


def chunk_boxes(size: int, height: int = HEIGHT, width: int = WIDTH) -> list[tuple[int, int, int, int]]:
    return [(x, y, min(size, width - x), min(size, height - y))
            for y in range(0, height, size) for x in range(0, width, size)]


def assert_same_tables(expected, actual) -> None:
    assert set(expected) == set(actual)
    for kind in expected:
        a, b = expected[kind], actual[kind]
        assert list(a.columns) == list(b.columns), kind
        assert a["instance_id"].tolist() == b["instance_id"].tolist(), kind
        for column in a.columns.drop("geometry"):
            assert a[column].tolist() == b[column].tolist(), (kind, column)
        assert (shapely.to_wkb(a.geometry.values) == shapely.to_wkb(b.geometry.values)).all(), kind


def test_whole_slide_has_realistic_content(whole) -> None:
    assert len(whole["nuclei"]) > 2000
    assert len(whole["glands"]) >= 5 and len(whole["lumens"]) >= 3
    assert whole["glands"]["lumen_count"].sum() >= 3
    big = whole["glands"].geometry.bounds
    assert ((big["maxx"] - big["minx"]) > 2 * 432).any()  # a gland wider than a 432-px chunk (level-0 = 2×)
    for table in whole.values():
        assert table.geometry.is_valid.all()
        assert table["instance_id"].is_unique


@pytest.mark.parametrize("size", [432, 1008, max(HEIGHT, WIDTH)])
def test_chunked_equals_whole_slide(maps, whole, size) -> None:
    results = [chunk_instances(maps, box, GEOMETRY, KINDS) for box in chunk_boxes(size)]
    if size == 432:
        cut = sum(len(r.fragments["nuclei"].first) for r in results)
        assert cut > 100  # many nuclei straddle chunk faces and corners
    assert_same_tables(whole, merge_slide(maps, results, GEOMETRY, KINDS))


def test_task_order_does_not_matter(maps, whole) -> None:
    boxes = chunk_boxes(432)
    random.Random(3).shuffle(boxes)
    results = [chunk_instances(maps, box, GEOMETRY, KINDS) for box in boxes]
    random.Random(4).shuffle(results)
    assert_same_tables(whole, merge_slide(maps, results, GEOMETRY, KINDS))


def test_zarr_maps_give_the_same_instances(maps, whole) -> None:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    for name, array in maps.items():
        tile = (1008 // (2 if array.shape[-1] == WIDTH // 2 else 1),) * 2
        group.create_array(name, data=array, chunks=array.shape[:-2] + tile if array.ndim == 3 else tile)
    stored = {name: group[name] for name in maps}
    results = [chunk_instances(stored, box, GEOMETRY, KINDS) for box in chunk_boxes(1008)]
    assert_same_tables(whole, merge_slide(stored, results, GEOMETRY, KINDS))


def test_stain_model_maps_without_glands_or_classes() -> None:
    maps = synthetic_maps(432, 576, seed=2)
    stain = {"nuclei_prob": maps["nuclei_prob"], "tissue_class": (maps["tissue_class"] > 0).astype(np.uint8)}
    nuclei, glands, lumens = cerberus_kinds()
    unclassed = replace(nuclei, kind=replace(nuclei.kind, class_head=None), class_names=("background", "nucleus"))
    kinds = SlideKinds((unclassed, glands, lumens), ("background", "tissue"))
    geometry = replace(GEOMETRY, slide_id="stain")
    whole = slide_instances(stain, geometry, kinds)
    results = [chunk_instances(stain, box, geometry, kinds) for box in chunk_boxes(432, 432, 576)]
    merged = merge_slide(stain, results, geometry, kinds)
    assert_same_tables(whole, merged)
    assert len(merged["glands"]) == 0 and len(merged["lumens"]) == 0 and "lumen_count" in merged["glands"]
    assert set(merged["nuclei"]["class_name"]) == {"nucleus"} and (merged["nuclei"]["class_prob"] == 1).all()
    assert set(merged["tissue"]["class_name"]) == {"tissue"}
    assert set(merged["nuclei"]["tissue_name"]) <= {"background", "tissue"}


def test_objects_know_the_tissue_cell_holding_their_centroid(maps, whole) -> None:
    transform = GEOMETRY.transform
    for kind in ("nuclei", "glands", "lumens"):
        table = whole[kind]
        x, y = transform.from_level0(table["centroid_x"].to_numpy(), table["centroid_y"].to_numpy())
        cell = maps["tissue_class"][(y // 144).astype(int), (x // 144).astype(int)]
        assert table["tissue_class"].tolist() == cell.tolist(), kind
        names = np.array(["background", "abnormal_epi", "normal_epi", "inflammatory", "muscle", "stroma", "debris",
                          "mucous", "adipose"])
        assert table["tissue_name"].tolist() == names[cell].tolist(), kind
    tissue = whole["tissue"]
    assert (tissue["tissue_class"] == tissue["class_id"]).all()


def test_without_a_tissue_map_the_tissue_columns_are_null(maps) -> None:
    found = slide_instances({k: v for k, v in maps.items() if k != "tissue_class"}, GEOMETRY, KINDS)
    for kind in ("nuclei", "glands", "lumens"):
        assert len(found[kind]) and found[kind]["tissue_class"].isna().all() and found[kind]["tissue_name"].isna().all()
        assert str(found[kind]["tissue_class"].dtype) == "Int32"


def test_tissue_regions_cover_their_cells(maps, whole) -> None:
    tissue = whole["tissue"]
    cells = (maps["tissue_class"] > 0).sum()
    level0_cell_area = (144 * 2.0) ** 2
    assert tissue.geometry.is_valid.all()
    assert np.isclose(tissue.geometry.area.sum(), cells * level0_cell_area)
    assert tissue["area_px"].sum() == cells * 144 * 144
    assert tissue.geometry.union_all().bounds[0] >= 7.0  # offset_x of the transform


def test_nucleus_inside_a_marker_ring_on_a_chunk_corner() -> None:
    yy, xx = np.mgrid[0:864, 0:864]
    radius = np.hypot(yy - 432, xx - 432)
    inner = np.where((radius < 3.5) | ((radius >= 8) & (radius < 14)), 0.9, 0.0)  # island inside a ring
    stored = {"nuclei_prob": np.stack([inner, np.zeros_like(inner)]).astype(np.float32)}
    kinds = SlideKinds(cerberus_kinds()[:1])
    whole = slide_instances(stored, GEOMETRY, kinds)
    # documented deviation: the island keeps its own instance (the reference would give it the ring's label)
    assert len(whole["nuclei"]) == 2
    results = [chunk_instances(stored, box, GEOMETRY, kinds) for box in chunk_boxes(432, 864, 864)]
    assert_same_tables(whole, merge_slide(stored, results, GEOMETRY, kinds))


def test_outlines_are_cut_to_a_slide_ending_inside_a_cell_and_a_pixel(maps) -> None:
    """A slide of 1500 x 1100 processing px whose level-0 edge (x = 3006, y = 2202) halves its last pixels."""
    h, w = 1100, 1500
    bounds = (GEOMETRY.transform.offset_x + 2 * w - 1, GEOMETRY.transform.offset_y + 2 * h - 1)
    stored = {}
    for name, array in maps.items():  # background past the slide, as the inference tasks store it
        down = HEIGHT // array.shape[-2]
        stored[name] = array.copy()
        if down < 144:
            stored[name][..., h // down :, :] = 0
            stored[name][..., :, w // down :] = 0
    geometry = replace(GEOMETRY, bounds=bounds)
    whole = slide_instances(stored, geometry, KINDS)
    results = [chunk_instances(stored, box, geometry, KINDS) for box in chunk_boxes(432)]
    assert_same_tables(whole, merge_slide(stored, results, geometry, KINDS))
    slide = shapely.box(0, 0, *bounds)
    for kind, table in whole.items():
        assert len(table) and table.geometry.within(slide).all() and table.geometry.is_valid.all(), kind
    reach = {kind: table.total_bounds[2:] for kind, table in whole.items()}
    assert tuple(reach["tissue"]) == bounds  # tissue cells overhang the slide on both sides: all cut
    assert tuple(reach["glands"]) == bounds and reach["lumens"][0] == bounds[0]  # dilated or on the last pixels: cut
    tissue = whole["tissue"]
    assert (tissue["area_px"] == np.rint(tissue.geometry.area / 4)).all()
    assert np.allclose(tissue["area_um2"], tissue.geometry.area / 4 * 0.5**2)
    assert np.allclose(tissue["centroid_x"], tissue.geometry.centroid.x)
    # Inside the slide nothing changes: nuclei (eroded against the background past it) are never cut.
    uncut = slide_instances(stored, GEOMETRY, KINDS)
    assert_same_tables({"nuclei": uncut["nuclei"]}, {"nuclei": whole["nuclei"]})


def border_pipeline(maps, size: int, count: int):
    """The pipeline's reduction: chunk tasks; border tasks, each given only its share's chunk results;
    a merge finishing the rest; the nuclei of the staged parts together. Also the shares, and the
    nuclei the merge finished itself."""
    boxes = chunk_boxes(size)
    results = [chunk_instances(maps, box, GEOMETRY, KINDS) for box in boxes]
    shares = border_shares(boxes, count)
    borders = [border_nuclei(maps, [results[i] for i in share.chunks], GEOMETRY, KINDS, share) for share in shares]
    finished = {"nuclei": np.concatenate([b.finished["nuclei"] for b in borders])}
    merged = merge_slide(maps, results, GEOMETRY, KINDS, finished)
    staged = [merged["nuclei"], *(b.tables["nuclei"] for b in borders)]
    nuclei = pd.concat(staged, ignore_index=True).sort_values("instance_id", ignore_index=True)
    return {**merged, "nuclei": gpd.GeoDataFrame(nuclei, geometry="geometry")}, shares, borders, merged["nuclei"]


@pytest.mark.parametrize("count", [1, 3])
def test_border_nuclei_in_shares_complete_the_slide(maps, whole, count) -> None:
    """Border tasks, each finishing the nuclei of one band of chunk rows from those rows' results and
    their neighbours', and a merge that leaves them out give the whole-slide tables together (as the
    pipeline stages them: one table per part)."""
    tables, shares, borders, _ = border_pipeline(maps, 432, count)
    assert len(shares) == count and all(len(b.tables["nuclei"]) for b in borders)  # every share has work
    if count == 3:  # a band of one row reads it and the rows either side, not the slide
        assert [len(share.chunks) for share in shares] == [8, 12, 8]
    assert_same_tables(whole, tables)


def test_border_windows_read_in_batches_give_the_same_tables(maps, whole, monkeypatch) -> None:
    """A border task reads its windows a bounded batch at a time (its memory stays flat however big its
    share); batches of a few windows give the tables of one batch."""
    batches = []
    monkeypatch.setattr(border, "WINDOWS_AT_ONCE", 20_000)
    monkeypatch.setattr(border, "read_windows", lambda array, windows: batches.append(windows) or read_windows(array, windows))
    tables, _, _, _ = border_pipeline(maps, 432, 1)
    assert len(batches) > 4 and all(sum((w[2] - w[0]) * (w[3] - w[1]) for w in b) <= 20_000 or len(b) == 1 for b in batches)
    assert_same_tables(whole, tables)


def test_a_nucleus_longer_than_a_band_is_finished_by_the_merge(maps) -> None:
    """A nucleus support crossing three chunk rows goes on past the row below its band: no border task
    can see it whole, so the merge finishes it, and the tables still equal the whole slide's."""
    tall = {name: array.copy() for name, array in maps.items()}
    tall["nuclei_prob"][0, 100:620, 700:712] = 255  # inner: a 520-px bar across rows of 144 px
    tall["nuclei_prob"][1, 100:620, 700:712] = 0
    whole_tall = slide_instances(tall, GEOMETRY, KINDS)
    tables, _, _, by_merge = border_pipeline(tall, 144, 8)
    assert len(by_merge) >= 1 and (by_merge.geometry.bounds["maxy"] - by_merge.geometry.bounds["miny"]).max() > 2 * 2 * 144
    assert_same_tables(whole_tall, tables)
