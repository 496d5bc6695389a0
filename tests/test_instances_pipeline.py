"""Instances through the whole pipeline: exact for any chunk size and worker count, and right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import zarr
from distributed import LocalCluster
from PIL import Image
from skimage.draw import polygon as fill_polygon

from cerberus_batch.slides import Transform
from cerberus_batch.storage.tables import read_table
from cerberus_batch.storage.zarr_maps import map_arrays
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds, cerberus_kinds
from cerberus_batch.tasks.merge import merge_slide
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.testing.slides import make_synthetic_slide
from conftest import mask_file
from helpers import run_ok, write_cohort

pytestmark = pytest.mark.e2e  # every test here runs a cohort

KINDS = ("nuclei", "glands", "lumens", "tissue")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_slide(tmp_path_factory.mktemp("slide") / "synthetic.svs", seed=0)


def run(folder: Path, slides, cluster, **sections) -> Path:
    return run_ok(write_cohort(folder, slides, **sections), cluster)


def tables(output: Path) -> dict:
    return {kind: read_table(output, kind).sort_values(["slide_id", "instance_id"]).reset_index(drop=True) for kind in KINDS}


def assert_same(expected: dict, actual: dict) -> None:
    for kind in KINDS:
        a, b = expected[kind], actual[kind]
        assert list(a.columns) == list(b.columns), kind
        for column in a.columns.drop("geometry"):
            assert a[column].tolist() == b[column].tolist(), (kind, column)
        assert (shapely.to_wkb(a.geometry.values) == shapely.to_wkb(b.geometry.values)).all(), kind


def geometry_of(slide_id: str, attrs: dict) -> SlideGeometry:
    return SlideGeometry(slide_id, Transform.from_dict(attrs["transform"]), attrs["mpp"], tuple(attrs["slide_dimensions"]))


def kinds_of(attrs: dict) -> SlideKinds:
    return SlideKinds(cerberus_kinds("wsi", attrs["class_names"]), tuple(attrs["class_names"]["Patch-Class"]))


def in_memory_reference(output: Path, slide_id: str) -> dict:
    """The definition of exact: post-processing applied to the whole-slide maps read into memory."""
    group = zarr.open_group(output / "maps" / slide_id, mode="r")
    maps = {name: array[...] for name, array in map_arrays(group).items()}
    attrs = dict(group.attrs)
    found = slide_instances(maps, geometry_of(slide_id, attrs), kinds_of(attrs))
    return {kind: table.assign(slide_id=table["slide_id"].astype(str)).sort_values("instance_id").reset_index(drop=True)[
        ["slide_id"] + [c for c in table.columns if c != "slide_id"]] for kind, table in found.items()}


@pytest.fixture(scope="module")
def chunked_runs(synthetic, cluster, tmp_path_factory):
    """The synthetic slide (glands wider than a chunk) at chunk 432, 1008 and one chunk for the slide."""
    root = tmp_path_factory.mktemp("runs")
    slides = [{"path": str(synthetic.path), "id": "synthetic"}]
    whole = -(-max(synthetic.image.shape[:2]) // 2 // 144) * 144  # the slide at 0.5 µm/px in one chunk
    return {
        chunk: run(root / str(chunk), slides, cluster, processing={"chunk": chunk})
        for chunk in (432, 1008, whole)
    }


def test_tables_identical_for_every_chunk_size(chunked_runs):
    outputs = list(chunked_runs.values())
    reference = tables(outputs[-1])
    assert len(reference["nuclei"]) > 500 and len(reference["tissue"]) >= 1
    for output in outputs[:-1]:
        assert_same(reference, tables(output))


def test_tables_equal_whole_slide_post_processing_of_the_maps(chunked_runs):
    output = chunked_runs[432]
    expected = in_memory_reference(output, "synthetic")
    actual = tables(output)
    for kind in KINDS:
        actual[kind] = actual[kind][expected[kind].columns]
    assert_same(expected, actual)


@pytest.mark.slow
def test_tables_identical_on_one_and_three_workers(synthetic, chunked_runs, tmp_path):
    slides = [{"path": str(synthetic.path), "id": "synthetic"}]
    for workers in (1, 3):
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as local:
            output = run(tmp_path / str(workers), slides, local, processing={"chunk": 432})
        assert_same(tables(chunked_runs[432]), tables(output))


def test_stain_nuclei_match_ground_truth(synthetic, chunked_runs):
    """Detection F1 at IoU ≥ 0.5 against the generator's nuclei, in level-0 pixels."""
    found = read_table(chunked_runs[1008], "nuclei")
    truth = synthetic.nuclei
    drawn = np.zeros(truth.shape, np.int32)
    for label, geometry in enumerate(found.geometry, start=1):
        x, y = np.asarray(geometry.exterior.coords).T
        rows, cols = fill_polygon(y, x, truth.shape)  # pixel (r, c) spans [c, c+1] x [r, r+1]
        drawn[rows, cols] = label
    pairs = np.stack([drawn.ravel(), truth.ravel()], 1)
    pairs = pairs[(pairs > 0).any(axis=1)]
    (pair, overlap) = np.unique(pairs, axis=0, return_counts=True)
    size_found = np.bincount(drawn.ravel(), minlength=len(found) + 1)
    size_truth = np.bincount(truth.ravel())
    both = (pair > 0).all(axis=1)
    iou = overlap[both] / (size_found[pair[both, 0]] + size_truth[pair[both, 1]] - overlap[both])
    matched = pair[both][iou >= 0.5]
    tp = len(np.unique(matched[:, 0]))
    precision, recall = tp / len(found), tp / truth.max()
    f1 = 2 * precision * recall / (precision + recall)
    print(f"stain model nuclei vs ground truth: precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f}")
    assert f1 >= 0.8


def test_cerberus_instances_exact_on_real_slide(cmu_slide, parity_model_dir, cluster, tmp_path):
    """Deterministic-weights Cerberus on a tissue box crossing 432-px chunk borders of CMU-1-Small-Region."""
    mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
    mask[80:95, 36:51] = 255  # processing px ~(360..510, 800..950): crosses the 432 grid lines
    Image.fromarray(mask).save(mask_file(tmp_path))
    output = run(
        tmp_path, [{"path": str(cmu_slide), "id": "cmu", "mask": "masks/mask.png"}], cluster,
        model={"kind": "cerberus", "weights": str(parity_model_dir)},
        processing={"chunk": 432, "tile": 432, "tissue_mask": "given"},
    )
    expected = in_memory_reference(output, "cmu")
    assert len(expected["nuclei"]) > 0
    group = zarr.open_group(output / "maps" / "cmu", mode="r")
    attrs = dict(group.attrs)
    maps = map_arrays(group)
    h, w = maps["nuclei_prob"].shape[1:]
    geometry, kinds = geometry_of("cmu", attrs), kinds_of(attrs)
    for size in (432, 1008, max(h, w)):
        boxes = [(x, y, min(size, w - x), min(size, h - y)) for y in range(0, h, size) for x in range(0, w, size)]
        parts = [chunk_instances(maps, box, geometry, kinds) for box in boxes]
        merged = merge_slide(maps, parts, geometry, kinds)
        for kind in KINDS:
            got = merged[kind].sort_values("instance_id").reset_index(drop=True)
            got = got.assign(slide_id=got["slide_id"].astype(str))[expected[kind].columns]
            assert got["instance_id"].tolist() == expected[kind]["instance_id"].tolist(), (size, kind)
            assert (shapely.to_wkb(got.geometry.values) == shapely.to_wkb(expected[kind].geometry.values)).all()
            assert got["class_id"].tolist() == expected[kind]["class_id"].tolist()
    assert_same(expected, {k: tables(output)[k][expected[k].columns] for k in KINDS})
