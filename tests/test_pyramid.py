"""Viewer levels: every map of a slide is an OME-NGFF 0.5 image with levels down to 1,000 px, built
once the slide's maps are written, never waited on by its objects, and rebuilt only when its maps change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from napari_ome_zarr import napari_get_reader
from ome_zarr_models.v05.image import Image

from cerberus_batch.grid import CELL
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.ledger import LEVELS_WRITTEN, Ledger
from cerberus_batch.storage.levels import MEAN, MODE, halve, level_shapes
from cerberus_batch.testing.slides import make_synthetic_slide
from cerberus_batch.vocabulary import HEAD_MAPS
from helpers import write_cohort

# Level-0 px at 0.25 µm/px: at 0.5 µm/px, 2400 x 600 px on whole 144-px cells, so nuclei maps of
# 2448 x 720 px, halved twice to reach 1,000 px.
SLIDE_SIZE = (4800, 1200)
NUCLEI_LEVELS = [(2, 720, 2448), (2, 360, 1224), (2, 180, 612)]
STORED = {stored.name: stored for maps in HEAD_MAPS.values() for stored in maps}


def test_probabilities_halve_to_the_block_mean_rounded_half_to_even():
    block = np.array([[[0, 1, 1, 2, 2, 3, 7], [0, 1, 1, 2, 3, 3, 9]]], np.uint8)  # (1, 2, 7): an odd width
    # Means 0.5 → 0 and 1.5 → 2 (half to even), 2.75 → 3, and the last column's 8 alone.
    assert halve(block, MEAN).tolist() == [[[0, 2, 3, 8]]]
    assert halve(np.array([[2, 3], [2, 3]], np.uint8), MEAN).tolist() == [[2]]  # 2.5 → 2
    assert halve(np.full((2, 2), 255, np.uint8), MEAN).tolist() == [[255]]
    floats = halve(np.array([[0.25, 0.5], [0.5, 1.0]], np.float16), MEAN)
    assert floats.dtype == np.float16 and floats.tolist() == [[0.5625]]


def test_classes_halve_to_the_block_mode_ties_to_the_first_in_raster_order():
    block = np.array([
        [1, 2, 3, 3, 4, 1, 5],
        [2, 2, 1, 2, 2, 3, 6],
        [7, 8, 0, 0, 9, 9, 4],
    ], np.uint8)  # 3 x 7: an odd row and column
    assert halve(block, MODE).tolist() == [
        [2, 3, 4, 5],  # 2 thrice; 3 and 3 vs 1, 2; all four differ: the first; the last column: 5 over 6
        [7, 0, 9, 4],  # the last row alone: 7 over 8, 0 twice, 9 twice, the corner
    ]
    assert halve(np.array([[1, 2], [2, 1]], np.uint8), MODE).tolist() == [[1]]  # 2 against 2: the first


def test_levels_halve_until_the_longer_side_is_at_most_1000_px():
    assert level_shapes((2, 720, 2448)) == NUCLEI_LEVELS
    assert level_shapes((1000, 1000)) == [(1000, 1000)]
    assert level_shapes((3, 1001, 10)) == [(3, 1001, 10), (3, 501, 5)]


class PyramidGraph(SchedulerPlugin):
    """On the scheduler: what each run's pyramid task waited for, what waited for it, and the inference tasks."""

    name = "pyramid-graph"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.waited_for: list[set[str]] = []  # one entry per pyramid task
        self.waiting: list[set[str]] = []
        self.inferred: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish != "processing":
            return
        task = self.scheduler.tasks[key]
        if str(key).startswith("infer-"):
            self.inferred.add(key)
        elif str(key).startswith("pyramid-"):
            self.waited_for.append({dependency.key for dependency in task.dependencies})
            self.waiting.append({dependent.key for dependent in task.dependents})


@pytest.fixture(scope="module")
def cluster():
    # Its own: the pyramid graph plugin watches this scheduler while the run goes.
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as local:
        yield local


@pytest.fixture(scope="module")
def wide(tmp_path_factory, cluster):
    """A run of the stain model on a slide whose maps are wider than 1,000 px; the pyramid graph seen."""
    folder = tmp_path_factory.mktemp("pyramid")
    make_synthetic_slide(folder / "slides" / "wide.svs", size=SLIDE_SIZE, seed=4)
    cohort = load_cohort(write_cohort(folder, [{"path": "slides/wide.svs", "id": "wide"}], processing={"chunk": 432}))
    seen = run_seen(cohort, cluster)
    return cohort, seen


def run_seen(cohort, cluster) -> tuple:
    graph = PyramidGraph(cluster.scheduler)
    cluster.scheduler.add_plugin(graph)
    try:
        report = run_cohort(cohort, show_progress=False, cluster=cluster)
    finally:
        cluster.scheduler.remove_plugin(name=graph.name)
    return report, graph


def maps_of(cohort) -> dict[str, zarr.Group]:
    group = zarr.open_group(cohort.output / "maps" / "wide", mode="r")
    return dict(group.groups())


def expected_transforms(name: str, mpp: float, level: int, lead: int) -> tuple[list[float], list[float]]:
    """(scale, translation) of a level: px of (downsample × 2^level) processing px, centred on them."""
    px = STORED[name].downsample * 2**level * mpp
    return [1.0] * lead + [px, px], [0.0] * lead + [(px - mpp) / 2] * 2


@pytest.mark.e2e
def test_every_map_is_an_ome_zarr_image_with_levels_down_to_1000_px(wide):
    cohort, (report, _) = wide
    assert report.status == "ok", report.slides
    mpp = zarr.open_group(cohort.output / "maps" / "wide", mode="r").attrs["mpp"]
    maps = maps_of(cohort)
    assert set(maps) == {"nuclei_prob", "nuclei_class", "tissue_prob", "tissue_class"}  # the stain model's heads
    assert [maps["nuclei_prob"][str(k)].shape for k in range(3)] == NUCLEI_LEVELS
    recorded = Ledger(cohort.output).slide_stage("wide", LEVELS_WRITTEN)["levels"]
    for name, group in maps.items():
        image = Image.from_zarr(group)  # validates the metadata and that every level it lists is there
        (multiscale,) = image.ome_attributes.multiscales
        shapes = level_shapes(group["0"].shape)
        assert max(shapes[-1][-2:]) <= 1000 and recorded[name] == len(shapes)
        assert [dataset.path for dataset in multiscale.datasets] == [str(k) for k in range(len(shapes))], name
        lead = len(shapes[0]) - 2
        for k, dataset in enumerate(multiscale.datasets):
            level = group[str(k)]
            assert level.shape == shapes[k] and level.dtype == np.uint8, (name, k)
            assert level.metadata.dimension_names == tuple(axis.name for axis in multiscale.axes)
            scale, translation = dataset.coordinateTransformations
            expected_scale, expected_translation = expected_transforms(name, mpp, k, lead)
            assert list(scale.scale) == pytest.approx(expected_scale) and list(translation.translation) == pytest.approx(expected_translation)
        assert multiscale.type == (MEAN if STORED[name].form == "prob" else MODE)


@pytest.mark.e2e
def test_napari_reads_every_level_of_every_map(wide):
    cohort, _ = wide
    mpp = zarr.open_group(cohort.output / "maps" / "wide", mode="r").attrs["mpp"]
    for name, group in maps_of(cohort).items():
        path = str(cohort.output / "maps" / "wide" / name)
        ((levels, meta, layer_type),) = napari_get_reader(path)(path)
        assert layer_type == "image"
        assert [level.shape for level in levels] == level_shapes(group["0"].shape), name
        assert meta["scale"] == pytest.approx([STORED[name].downsample * mpp] * 2), name
        assert meta.get("channel_axis") == (0 if STORED[name].channels else None), name
        np.testing.assert_array_equal(np.asarray(levels[-1]), group[str(len(levels) - 1)][:])


@pytest.mark.e2e
def test_each_level_is_the_mean_or_mode_of_2x2_blocks_of_the_one_before(wide):
    cohort, _ = wide
    maps = maps_of(cohort)
    fine, coarse = maps["nuclei_prob"]["1"][:].astype(np.float64), maps["nuclei_prob"]["2"][:]
    assert fine.any()
    blocks = fine.reshape(2, 180, 2, 612, 2).mean(axis=(2, 4))  # 360 x 1224: even, no edge px
    np.testing.assert_array_equal(coarse, np.rint(blocks))
    fine, coarse = maps["nuclei_class"]["0"][:], maps["nuclei_class"]["1"][:]
    assert len(np.unique(fine)) > 1
    blocks = fine.reshape(360, 2, 1224, 2).transpose(0, 2, 1, 3).reshape(360, 1224, 4)
    counts = (blocks == coarse[..., None]).sum(axis=-1)
    most = np.max([(blocks == blocks[..., [i]]).sum(axis=-1) for i in range(4)], axis=0)
    assert (counts == most).all()  # each px holds a most common class of its block
    # ...and of several equally common ones, the first in raster order.
    firsts = np.argmax(blocks == coarse[..., None], axis=-1)
    earlier = [(blocks == blocks[..., [i]]).sum(axis=-1) == most for i in range(4)]
    assert all(((firsts <= i) | ~earlier[i]).all() for i in range(4))
    cells = maps["tissue_class"]["0"].shape
    assert cells == (720 // CELL, 2448 // CELL)  # 5 x 17: one level only


@pytest.mark.e2e
def test_the_pyramid_waits_for_the_slides_inference_and_nothing_waits_for_it(wide):
    _, (_, graph) = wide
    assert graph.inferred and graph.waited_for == [graph.inferred]
    assert graph.waiting == [set()]


@pytest.mark.e2e
def test_a_rerun_keeps_the_levels_unless_the_maps_were_recomputed(wide, cluster):
    cohort, _ = wide
    # The last level, which the pyramid task makes (the first ones are the chunk tasks'); a rebuild renames
    # a new folder into place.
    level = cohort.output / "maps" / "wide" / "nuclei_prob" / str(len(NUCLEI_LEVELS) - 1)
    built = level.stat().st_ino
    report, graph = run_seen(cohort, cluster)
    assert report.status == "ok" and report.slides["wide"].chunks_computed == 0, report.slides
    assert graph.waited_for == [] and level.stat().st_ino == built

    # A chunk whose maps are written again (its ledger marker lost): the levels are built again.
    marker = sorted((cohort.output / "ledger" / "wide").glob("chunk-*.done"))[0]
    marker.unlink()
    report, graph = run_seen(cohort, cluster)
    assert report.status == "ok" and report.slides["wide"].chunks_computed == 1, report.slides
    assert len(graph.waited_for) == 1 and level.stat().st_ino != built
    assert Image.from_zarr(maps_of(cohort)["nuclei_prob"]).ome_attributes.multiscales[0].datasets[-1].path == "2"

    # Levels that cannot be built fail the slide, in one line, with the traceback in its log.
    metadata = cohort.output / "maps" / "wide" / "nuclei_class" / "zarr.json"
    broken = json.loads(metadata.read_text())
    broken["attributes"]["ome"]["multiscales"][0]["type"] = "gaussian"
    metadata.write_text(json.dumps(broken))
    (cohort.output / "ledger" / "wide" / "pyramid.json").unlink()
    report, _ = run_seen(cohort, cluster)
    outcome = report.slides["wide"]
    assert report.status == "failed" and outcome.status == "failed", report.slides
    assert "gaussian" in outcome.error and "\n" not in outcome.error
    assert "Traceback" in (cohort.output / "logs" / "wide.log").read_text()


@pytest.mark.e2e
def test_levels_made_chunk_by_chunk_equal_the_map_halved_whole(wide):
    """The chunk tasks halve their own maps (the first levels), the pyramid task the rest: every level is
    its predecessor halved as one array, odd last rows and columns included."""
    cohort, _ = wide
    for name, group in maps_of(cohort).items():
        method = MEAN if STORED[name].form == "prob" else MODE
        levels = level_shapes(group["0"].shape)
        for k in range(1, len(levels)):
            np.testing.assert_array_equal(group[str(k)][:], halve(group[str(k - 1)][:], method), err_msg=f"{name} level {k}")


@pytest.mark.parametrize("shape", [(2, 7, 9), (5, 6), (1, 1), (3, 1, 4), (2, 2016, 2016)])
def test_the_compiled_uint8_halving_agrees_with_numpy_on_wider_integers(shape):
    """uint8 maps halve in one compiled pass; the same values as uint16 take the numpy path."""
    rng = np.random.default_rng(sum(shape))
    for high in (256, 3):  # probabilities; few classes, so modes have ties
        block = rng.integers(0, high, shape).astype(np.uint8)
        for method in (MEAN, MODE):
            np.testing.assert_array_equal(halve(block, method), halve(block.astype(np.uint16), method).astype(np.uint8))
