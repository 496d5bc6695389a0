"""The compiled nuclei post-processing equals the pre-compilation implementation (tests/nuclei_reference.py,
whole-window numpy / scipy / skimage passes), table for table, on real H&E maps and on the demo cohort."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from scipy import ndimage

from cerberus_batch.grid import whole_cells
from cerberus_batch.model.factory import build_predictor
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.quantisation import dequantise, quantise
from cerberus_batch.slides import Transform, open_slide
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.tables import read_table
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import instance_table
from cerberus_batch.tasks.kinds import SlideKinds, cerberus_kinds
from cerberus_batch.tasks.merge import merge_slide
from cerberus_batch.tasks.nuclei import find_supports, measure_nuclei, segment_nuclei
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.tasks.windows import tissue_cells
from cerberus_batch.vocabulary import TISSUE
from nuclei_reference import segment_nuclei as reference_segment_nuclei

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).parents[1] / "configs"
GEOMETRY = SlideGeometry("cmu", Transform(2.0, 2.0, 5.0, 3.0), 0.5)


@pytest.fixture(scope="module")
def cmu_maps(cmu_slide) -> dict[str, np.ndarray]:
    """The stain model's stored maps of the whole CMU-1-Small-Region (real H&E), as a run stores them."""
    view = open_slide(cmu_slide).at_mpp(0.5)
    predictor = build_predictor("stain")
    h, w = whole_cells(view.shape)
    outputs = predict_chunk(view.read, predictor, (0, 0, w, h))
    return stored_maps(outputs, map_specs(predictor.heads, predictor.class_names), [], view.shape)


def stain_kinds(maps):
    nuclei, glands, lumens = cerberus_kinds()
    unclassed = replace(nuclei, kind=replace(nuclei.kind, class_head=None), class_names=("background", "nucleus"))
    return unclassed, glands, lumens


def reference_nuclei_table(maps, kind, geometry):
    inner, contour = dequantise(np.asarray(maps[kind.prob_map]))
    labels, _ = reference_segment_nuclei(inner, contour, kind)
    # Each nucleus's tissue is looked up as the pipeline does: the segmentation is what is compared here.
    return instance_table(labels, None, np.unique(labels[labels > 0]), kind=kind, origin=(0, 0),
                          map_width=labels.shape[1], tissue=tissue_cells(maps, TISSUE.classes), geometry=geometry)


def assert_same_rows(expected: gpd.GeoDataFrame, actual: gpd.GeoDataFrame) -> None:
    """Same rows (any order), every column, geometries byte for byte."""
    a = expected.sort_values("instance_id", ignore_index=True)
    b = actual.sort_values("instance_id", ignore_index=True)
    assert list(a.columns) == list(b.columns)
    for column in a.columns.drop("geometry"):
        assert a[column].tolist() == b[column].tolist(), column
    assert (shapely.to_wkb(a.geometry.values) == shapely.to_wkb(b.geometry.values)).all()


@pytest.mark.parametrize("chunk", [432, 1008, None])
def test_compiled_nuclei_equal_the_reference_on_real_maps(cmu_maps, chunk) -> None:
    kinds = stain_kinds(cmu_maps)
    expected = reference_nuclei_table(cmu_maps, kinds[0], GEOMETRY)
    assert len(expected) >= 2000
    if chunk is None:
        actual = slide_instances(cmu_maps, GEOMETRY, SlideKinds(kinds[:1]))["nuclei"]
    else:
        height, width = cmu_maps["nuclei_prob"].shape[1:]
        boxes = [(x, y, min(chunk, width - x), min(chunk, height - y))
                 for y in range(0, height, chunk) for x in range(0, width, chunk)]
        results = [chunk_instances(cmu_maps, box, GEOMETRY, SlideKinds(kinds[:1])) for box in boxes]
        actual = merge_slide(cmu_maps, results, GEOMETRY, SlideKinds(kinds[:1]))["nuclei"]
    assert_same_rows(expected, actual)


@pytest.mark.e2e
def test_demo_cohort_tables_equal_those_of_version_0_1(tmp_path) -> None:
    """tests/data/demo_tables_0.1 holds the demo cohort's tables as cerberus-batch 0.1 wrote them."""
    cohort = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cohort["output"] = str(tmp_path / "out")
    cohort["slides"] = {"glob": str(CONFIGS / "demo" / "slides" / "*.svs")}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cohort))
    report = run_cohort(load_cohort(tmp_path / "demo.yaml"), show_progress=False)
    assert report.status == "ok"
    for kind in ("nuclei", "tissue"):
        before = pd.concat([gpd.read_parquet(path).assign(slide_id=path.parent.name.removeprefix("slide_id="))
                            for path in sorted((DATA / "demo_tables_0.1" / kind).glob("*/*.parquet"))])
        now = read_table(tmp_path / "out", kind)
        assert len(before) > (1000 if kind == "nuclei" else 0)
        for slide_id in sorted(set(before["slide_id"])):
            old = before[before["slide_id"] == slide_id].drop(columns=["slide_id", "bbox"], errors="ignore")
            new = now[now["slide_id"] == slide_id].drop(columns=["slide_id", "bbox"], errors="ignore")
            # Objects know their tissue since 0.1 wrote these (issue 22); every column 0.1 wrote is unchanged.
            assert set(new.columns) - set(old.columns) == {"tissue_class", "tissue_name"}
            assert new["tissue_name"].notna().all()  # the stain model's tissue head ran
            assert_same_rows(gpd.GeoDataFrame(old, geometry="geometry"),
                             gpd.GeoDataFrame(new[list(old.columns)], geometry="geometry"))


def test_stored_maps_flood_level_by_level_as_the_heap_does() -> None:
    """uint8 maps flood level by level (`nuclei_flood._flood_levels`), float maps by the heap: both give the reference's
    nuclei, on maps made for ties (8 probability levels, wide plateaus) and supports holding many markers."""
    rng = np.random.default_rng(11)
    kind = cerberus_kinds()[0]
    smooth = ndimage.gaussian_filter(rng.random((600, 600)), 3)
    levels = np.digitize(smooth, np.quantile(smooth, np.linspace(0.3, 0.95, 8)))  # 0 (background) .. 8
    stored = quantise(np.stack([np.where(levels > 0, 0.35 + 0.08 * levels, 0.0), np.where(levels > 0, 0.3, 0.0)]))
    inner, contour = dequantise(stored)
    expected, supports = reference_segment_nuclei(inner, contour, kind)
    inside = expected > 0
    nuclei_per_support = np.bincount(np.unique(np.stack([supports[inside], expected[inside]]), axis=1)[0])
    assert nuclei_per_support.max() >= 10
    heap, _ = segment_nuclei(inner, contour, kind)  # float32 maps
    levelled = np.zeros(expected.shape, np.int32)
    found = find_supports(stored, kind)
    measure_nuclei(stored, None, found, np.ones(len(found), bool), kind, labels=levelled)
    for labels in (heap, levelled):
        assert np.array_equal(labels > 0, inside)
        pairs = np.unique(np.stack([labels[inside], expected[inside]]), axis=1)  # same partition: one to one
        assert pairs.shape[1] == len(np.unique(expected[inside])) == len(np.unique(labels[inside]))
