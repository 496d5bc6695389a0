"""Reference post-processing rules (spec §6) pinned on small hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from cerberus_batch.quantisation import dequantise
from cerberus_batch.slides import Transform
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.instances import Measured, instance_table, measure, measured_table, vote
from cerberus_batch.tasks.kinds import SlideKinds, cerberus_kinds
from cerberus_batch.tasks.nuclei import segment_nuclei
from cerberus_batch.tasks.outline import first_part, outer_ring
from cerberus_batch.tasks.postprocess import crop_box, dilate, ellipse_kernel, foreground, remove_small, segment_regions
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.testing.maps import synthetic_maps
from nuclei_reference import erode_cross, fill_own_holes

NUCLEI, GLANDS, LUMENS = cerberus_kinds("wsi")
TILE_NUCLEI, TILE_GLANDS, TILE_LUMENS = cerberus_kinds("tile")
GEOMETRY = SlideGeometry("s", Transform(1.0, 1.0), 0.5)


def probs(shape: tuple[int, int], *blocks: tuple[slice, slice, float]) -> tuple[np.ndarray, np.ndarray]:
    """(inner, contour) float32 maps with `inner` set to a value on each block, contour 0."""
    inner = np.zeros(shape, np.float32)
    for rows, cols, value in blocks:
        inner[rows, cols] = value
    return inner, np.zeros(shape, np.float32)


def test_kernels_are_opencv_ellipses() -> None:
    assert ellipse_kernel(1).tolist() == [[True]]
    assert ellipse_kernel(2).astype(int).tolist() == [[0, 1], [1, 1]]
    assert ellipse_kernel(3).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert ellipse_kernel(5).astype(int).tolist() == [
        [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]
    ]
    ten = ellipse_kernel(10)
    assert ten[0].astype(int).tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # apex at the anchor column 5
    assert ten[:, 0].astype(int).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_dilation_uses_the_opencv_anchor() -> None:
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    # 2×2 kernel [[0,1],[1,1]] with anchor (1,1): dst(y,x) = src(y-1,x) | src(y,x-1) | src(y,x)
    assert set(zip(*np.nonzero(dilate(dot, 2)))) == {(2, 2), (3, 2), (2, 3)}
    # 10×10 ellipse, anchor 5: reaches 5 px up/left and 4 px down/right
    grown = np.nonzero(dilate(np.pad(dot, 8), 10))
    assert (grown[0].min(), grown[0].max(), grown[1].min(), grown[1].max()) == (10 - 4, 10 + 5, 10 - 4, 10 + 5)


@pytest.mark.parametrize(("kind", "at", "above"), [(NUCLEI, 0.5, 0.51), (GLANDS, 0.55, 0.56), (LUMENS, 0.5, 0.51)])
def test_thresholds_are_strict(kind, at, above) -> None:
    inner = np.array([[at, above]], np.float32)
    if kind is NUCLEI:  # nuclei threshold inner + contour
        assert foreground(inner / 2, inner / 2, kind).tolist() == [[False, True]]
    else:
        assert foreground(inner, np.zeros_like(inner), kind).tolist() == [[False, True]]


def test_region_contour_over_half_cuts_the_foreground() -> None:
    inner = np.full((1, 3), 0.9, np.float32)
    contour = np.array([[0.5, 0.51, 0.0]], np.float32)
    assert foreground(inner, contour, GLANDS).tolist() == [[True, False, True]]


def test_an_object_of_exactly_min_size_is_kept() -> None:
    mask = np.zeros((6, 20), bool)
    mask[1, 0:8] = True  # 8 px
    mask[4, 0:7] = True  # 7 px
    kept = remove_small(mask, 8)
    assert kept[1].sum() == 8 and kept[4].sum() == 0
    # scikit-image 0.26's min_size also drops the 8-px object: the trap we avoid
    with pytest.warns(FutureWarning):
        assert remove_small_objects(mask, min_size=8).sum() == 0


def test_gland_minimum_area_at_half_resolution() -> None:
    assert GLANDS.min_area == 250 and GLANDS.kernel == 5 and LUMENS.min_area == 37 and LUMENS.kernel == 1
    assert TILE_GLANDS.min_area == 1000 and TILE_GLANDS.kernel == 10 and TILE_LUMENS.kernel == 2
    exact = probs((60, 60), (slice(20, 30), slice(20, 45), 0.9))  # 10 × 25 = 250 px
    short = probs((60, 60), (slice(20, 30), slice(20, 45), 0.9), (slice(20, 21), slice(20, 21), 0.0))
    assert segment_regions(*exact, GLANDS).max() == 1
    assert segment_regions(*short, GLANDS).max() == 0


def test_erosion_is_the_cross_and_spares_the_image_edge() -> None:
    mask = np.zeros((7, 7), bool)
    mask[0:4, 2:5] = True  # touches the top edge
    eroded = erode_cross(mask, (True, True, True, True))
    expected = np.zeros((7, 7), bool)
    expected[0:3, 3] = True  # the top row survives: beyond the edge counts as foreground
    assert (eroded == expected).all()
    assert not erode_cross(mask, (False, True, True, True))[0].any()


def test_small_eroded_bodies_and_markers_are_removed() -> None:
    # 4×6 block erodes to 2×4 = 8 px (kept); 4×5 erodes to 2×3 = 6 px (removed)
    inner, contour = probs((12, 20), (slice(1, 5), slice(1, 7), 0.9), (slice(7, 11), slice(1, 6), 0.9))
    labels, _ = segment_nuclei(inner, contour, NUCLEI)
    assert (labels[2:4, 2:6] > 0).all() and labels[7:11].max() == 0
    assert (labels > 0).sum() == 8
    # a marker of 3 px is removed, so its nucleus (mask without marker) stays 0
    inner, contour = probs((12, 12), (slice(4, 5), slice(4, 7), 0.9))
    contour[1:9, 1:9] = 0.6  # mask (inner + contour > 0.5) is the 8×8 block
    assert segment_nuclei(inner, contour, NUCLEI)[0].max() == 0
    inner[5, 4] = 0.9  # now 4 marker px
    assert segment_nuclei(inner, contour, NUCLEI)[0].max() == 1


def test_marker_watershed_splits_two_touching_nuclei() -> None:
    yy, xx = np.mgrid[0:30, 0:40]
    left, right = np.hypot(yy - 15, xx - 13), np.hypot(yy - 15, xx - 25)
    inner = np.clip(1.0 - np.minimum(left, right) / 9, 0, 1).astype(np.float32)  # valley at x = 19
    contour = np.where(np.minimum(left, right) < 9, 0.3, 0.0).astype(np.float32)
    labels, support = segment_nuclei(inner, contour, NUCLEI)
    assert len(np.unique(support[support > 0])) == 1  # one touching blob
    assert len(np.unique(labels[labels > 0])) == 2
    assert labels[15, 13] != labels[15, 25]
    assert (labels[:, :19][labels[:, :19] > 0] == labels[15, 13]).all()
    assert (labels[:, 20:][labels[:, 20:] > 0] == labels[15, 25]).all()


def reference_nuclei(inner: np.ndarray, contour: np.ndarray) -> np.ndarray:
    """Spec §6.3 written literally with library calls (cv2.erode's border = foreground)."""
    mask = (inner + contour) > 0.5
    eroded = ndimage.binary_erosion(mask, ellipse_kernel(3), border_value=1)
    body = remove_small_objects(ndimage.label(eroded)[0], max_size=7) > 0
    seeds = remove_small_objects(ndimage.label(inner > 0.5)[0], max_size=3) > 0
    markers = ndimage.label(ndimage.binary_fill_holes(seeds))[0]
    return watershed(-inner, markers, mask=body)


def by_first_pixel(labels: np.ndarray) -> np.ndarray:
    """The same instances, numbered in the raster order of their first pixels (numbering is arbitrary)."""
    found, first = np.unique(labels.ravel(), return_index=True)
    rank = np.zeros(int(found.max()) + 1, np.int64)
    rank[found[found > 0]] = np.argsort(np.argsort(first[found > 0])) + 1
    return rank[labels]


def test_nuclei_match_the_literal_reference_where_no_deviation_applies() -> None:
    stored = synthetic_maps(288, 432, seed=3)["nuclei_prob"]
    inner, contour = dequantise(stored)
    # continuous values: no two marker pixels tie, so skimage's tie order never matters
    inner = (inner + np.random.default_rng(0).uniform(0, 1e-3, inner.shape)).astype(np.float32)
    support = ndimage.label((inner + contour) > 0.5, np.ones((3, 3)))[0]
    seeds = remove_small(inner > 0.5, 4)
    assert (fill_own_holes(seeds, support) == ndimage.binary_fill_holes(seeds)).all()  # no nested nuclei here
    labels, _ = segment_nuclei(inner, contour, NUCLEI)
    assert labels.max() > 100
    assert (by_first_pixel(labels) == by_first_pixel(reference_nuclei(inner, contour))).all()


def test_tied_markers_flood_in_raster_order_whatever_else_is_in_the_image() -> None:
    # two markers of equal probability compete for the column between them (x = 4)
    inner, contour = probs((20, 40), (slice(1, 8), slice(1, 4), 0.7), (slice(1, 8), slice(5, 8), 0.7),
                           (slice(1, 8), slice(4, 5), 0.45))
    contour[1:8, 1:8] = 0.2
    alone = segment_nuclei(inner, contour, NUCLEI)[0]
    assert (alone[2:7, 4] == alone[2, 2]).all() and alone[2, 2] != alone[2, 6]  # the earlier marker wins
    for count in range(1, 7):  # unrelated nuclei elsewhere change skimage's heap layout, not the result
        crowd = inner.copy()
        for x in range(1, 1 + 6 * count, 6):
            crowd[12:19, x : x + 4] = 0.7
        crowded = segment_nuclei(crowd, contour, NUCLEI)[0]
        assert crowded[12:].max() > 0 and (crowded[:10] == alone[:10]).all()


def test_holes_enclosing_another_nucleus_stay_open() -> None:
    seeds = np.zeros((9, 9), bool)
    seeds[1:8, 1:8] = True
    seeds[2:7, 2:7] = False  # a ring of markers
    own = seeds.copy()
    island = np.zeros_like(seeds)
    island[4, 4] = True  # a separate foreground pixel inside, not touching the ring
    support = ndimage.label(own | island, np.ones((3, 3)))[0]
    assert fill_own_holes(own, support)[4, 4] == False  # noqa: E712  (reference would fill it)
    alone = ndimage.label(own, np.ones((3, 3)))[0]
    assert fill_own_holes(own, alone)[2:7, 2:7].all()  # without the island the hole fills as usual


def test_gland_overwrite_order_follows_first_pixels() -> None:
    inner, contour = probs((60, 80), (slice(20, 40), slice(10, 35), 0.9), (slice(20, 40), slice(37, 62), 0.9))
    labels = segment_regions(inner, contour, GLANDS)
    # the 2-px gap (cols 35, 36) is covered by both dilations; the later gland (2) wins
    assert labels[25, 35] == 2 and labels[25, 36] == 2
    assert labels[25, 34] == 1 and labels[25, 37] == 2


def test_padding_is_skipped_where_it_would_reach_the_last_row() -> None:
    assert crop_box((12, 12, 20, 20), 10, (30, 40)) == (2, 2, 20, 30)  # 20 + 10 = 30 > 29: bottom unpadded
    assert crop_box((12, 12, 19, 19), 10, (30, 40)) == (2, 2, 29, 29)
    assert crop_box((5, 5, 10, 10), 10, (30, 40)) == (5, 5, 20, 20)  # 5 - 10 < 0: top/left unpadded
    inner, contour = probs((40, 60), (slice(3, 23), slice(20, 40), 0.9))  # top 3 px from the edge
    labels = segment_regions(inner, contour, GLANDS)
    assert labels[:3].max() == 0  # dilation clipped at the unpadded crop edge
    assert labels[23:25, 25].tolist() == [1, 1]  # padded side dilates by 2


def test_lumen_outside_every_gland_is_dropped() -> None:
    gland = probs((80, 120), (slice(10, 50), slice(10, 50), 0.9))
    lumen = probs((80, 120), (slice(20, 30), slice(20, 30), 0.9), (slice(60, 70), slice(80, 90), 0.9))
    maps = {"gland_prob": np.stack(gland), "lumen_prob": np.stack(lumen)}
    tables = slide_instances(maps, GEOMETRY, SlideKinds((GLANDS, LUMENS)))
    assert len(tables["glands"]) == 1 and len(tables["lumens"]) == 1
    assert tables["lumens"]["centroid_y"].iloc[0] < 2 * 50  # the one inside the gland (level-0 = 2 × map)
    assert tables["glands"]["lumen_count"].tolist() == [1]


def test_class_vote_prefers_the_runner_up_over_background() -> None:
    counts = np.array([[5, 0, 3], [5, 0, 0], [0, 2, 2], [1, 3, 0]])
    chosen, count = vote(counts)
    assert chosen.tolist() == [2, 0, 1, 1] and count.tolist() == [3, 5, 2, 3]
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 7
    classes = np.zeros((6, 6), np.int64)
    classes[1:3, 1:5] = 3  # 8 of 16 px are lymphocyte, 8 background
    classes[1, 1] = 0
    table = instance_table(labels, classes, np.array([7]), kind=NUCLEI, origin=(0, 0), map_width=6, geometry=GEOMETRY)
    assert table["class_name"].tolist() == ["lymphocyte"] and table["class_prob"].tolist() == [7 / 16]


def test_windows_measured_together_keep_their_classes_when_one_finds_nothing() -> None:
    """Glands are measured window by window and tabled together: a window whose region was painted
    over holds no instance, and must not cost the others their classes."""
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 1
    classes = np.full((6, 6), 2, np.int64)
    painted_over = measure(np.zeros((6, 6), np.int32), classes, np.array([1]), len(NUCLEI.class_names))
    found = measure(labels, classes, np.array([1]), len(NUCLEI.class_names))
    joined = Measured.joined([(painted_over, (0, 0)), (found, (10, 10))])
    table = measured_table(joined, kind=NUCLEI, origin=(0, 0), map_width=20, geometry=GEOMETRY)
    assert table["class_id"].tolist() == [2] and table["class_prob"].tolist() == [1.0]


def test_instance_geometry_in_level0_pixels() -> None:
    inner, contour = probs((30, 40), (slice(10, 16), slice(20, 26), 0.9))  # erodes to rows 11-14, cols 21-24
    labels, _ = segment_nuclei(inner, contour, NUCLEI)
    table = instance_table(labels, None, np.array([1]), kind=NUCLEI, origin=(0, 0), map_width=40,
                           geometry=SlideGeometry("s", Transform(2.0, 2.0, 100.0, 50.0), 0.5))
    row = table.iloc[0]
    assert row["geometry"].bounds == (21 * 2 + 100, 11 * 2 + 50, 25 * 2 + 100, 15 * 2 + 50)
    assert row["geometry"].area == 16 * 4
    assert (row["centroid_x"], row["centroid_y"]) == (23 * 2 + 100, 13 * 2 + 50)
    assert row["instance_id"] == 11 * 40 + 21 and row["area_px"] == 16 and row["area_um2"] == 4.0


def test_outlines_trace_pixels_exactly_and_are_valid() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        blob = ndimage.gaussian_filter(rng.random((24, 24)), 1.5) > 0.5
        if not blob.any():
            continue
        part = first_part(blob)
        ring = shapely.Polygon(outer_ring(part))
        assert ring.is_valid and ring.area == part.sum()
        assert part[np.unravel_index(np.argmax(blob), blob.shape)]  # holds the first pixel


def test_single_row_instances_are_dropped() -> None:
    labels = np.zeros((5, 8), np.int32)
    labels[1, 1:6] = 1  # a line: the reference contour has 2 points
    labels[3:5, 1:3] = 2
    table = instance_table(labels, None, np.array([1, 2]), kind=NUCLEI, origin=(0, 0), map_width=8, geometry=GEOMETRY)
    assert table["instance_id"].tolist() == [3 * 8 + 1]
