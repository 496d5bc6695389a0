"""The stain baseline on the real CMU-1-Small-Region H&E slide (0.499 µm/px, the processing resolution)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiffslide
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.segmentation import watershed

from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.model.stain import StainPredictor, StainSettings, disk_maximum, mean_capped_depth, smoothed_hematoxylin
from cerberus_batch.testing.slides import make_synthetic_slide

# Output region of the dermis/epidermis crop, (row, col) of its top-left slide pixel.
DERMIS = (1872, 864)
DERMIS_SIZE = 288
# Picked by eye on the crop (row, col within the output region).
NUCLEUS_CENTRES = [
    (137, 129), (114, 154), (187, 150), (98, 92), (101, 140), (142, 186), (155, 74),  # dermis
    (14, 214), (50, 246), (74, 203), (78, 268), (87, 259),  # basal epidermis
]
STROMA_POINTS = [(164, 114), (167, 139), (131, 164), (127, 106), (181, 81), (164, 181)]
# Nuclei counted by eye in rows/cols [64, 208) of the crop (collagen-rich dermis).
COUNT_AREA = (64, 208)
NUCLEI_COUNTED = 20

# Output region across the left tissue edge: 3 x 5 cells; by eye, cell columns 0-2 are
# glass (two specks of debris), column 3 holds a sliver of tissue, column 4 is dermis.
EDGE = (1584, 288)
EDGE_CELLS = (3, 5)


def read_with_context(slide_path: Path, top_left: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB input for the output region at `top_left` (row, col) of `size` (rows, cols)."""
    (row, col), (rows, cols) = top_left, size
    with tiffslide.TiffSlide(slide_path) as slide:
        region = slide.read_region((col - CONTEXT, row - CONTEXT), 0, (cols + 2 * CONTEXT, rows + 2 * CONTEXT))
    return np.asarray(region.convert("RGB"))


@pytest.fixture(scope="module")
def predictor() -> StainPredictor:
    return StainPredictor()


@pytest.fixture(scope="module")
def dermis(cmu_slide: Path) -> np.ndarray:
    return read_with_context(cmu_slide, DERMIS, (DERMIS_SIZE, DERMIS_SIZE))


@pytest.fixture(scope="module")
def dermis_outputs(predictor: StainPredictor, dermis: np.ndarray) -> dict[str, np.ndarray]:
    return predictor.predict(dermis)


def nuclei_instances(inner: np.ndarray, contour: np.ndarray) -> np.ndarray:
    """The Cerberus nuclei post-processing (spec §6.3), written out independently."""

    def drop_smaller_than(mask: np.ndarray, pixels: int) -> np.ndarray:
        labels, _ = ndi.label(mask)
        keep = np.bincount(labels.ravel()) >= pixels
        keep[0] = False
        return keep[labels]

    mask = ndi.binary_erosion((inner + contour) > 0.5, ndi.generate_binary_structure(2, 1))
    mask = drop_smaller_than(mask, 8)
    markers, _ = ndi.label(ndi.binary_fill_holes(drop_smaller_than(inner > 0.5, 4)))
    return watershed(-inner, markers, mask=mask)


def test_outputs_follow_the_predictor_contract(predictor, dermis_outputs):
    cells = DERMIS_SIZE // CELL
    assert predictor.kind == "stain"
    assert predictor.identity.startswith("stain-baseline")
    assert set(dermis_outputs) == set(predictor.heads) == {"Nuclei-INST", "Nuclei-TYPE", "Patch-Class"}
    expected = {
        "Nuclei-INST": (2, DERMIS_SIZE, DERMIS_SIZE),
        "Nuclei-TYPE": (len(predictor.class_names["Nuclei-TYPE"]), DERMIS_SIZE, DERMIS_SIZE),
        "Patch-Class": (len(predictor.class_names["Patch-Class"]), cells, cells),
    }
    for head, shape in expected.items():
        out = dermis_outputs[head]
        assert out.shape == shape and out.dtype == np.float32, head
        assert out.min() >= 0.0 and out.max() <= 1.0, head
    np.testing.assert_allclose(dermis_outputs["Nuclei-TYPE"].sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(dermis_outputs["Patch-Class"].sum(axis=0), 1.0, atol=1e-6)
    # inner + contour is the nucleus probability the TYPE head reports
    np.testing.assert_allclose(
        dermis_outputs["Nuclei-INST"].sum(axis=0), dermis_outputs["Nuclei-TYPE"][1], atol=1e-6
    )


def test_inner_is_high_on_nuclei_and_low_on_stroma_picked_by_eye(dermis_outputs):
    inner = dermis_outputs["Nuclei-INST"][0]
    # A centre picked by eye can be a pixel or two off, so look at its 3x3 neighbourhood.
    on_nuclei = [inner[r - 1 : r + 2, c - 1 : c + 2].max() for r, c in NUCLEUS_CENTRES]
    on_stroma = [inner[r, c] for r, c in STROMA_POINTS]
    assert min(on_nuclei) > 0.5, on_nuclei
    assert max(on_stroma) < 0.1, on_stroma


def test_inner_follows_hematoxylin(dermis, dermis_outputs):
    inner = dermis_outputs["Nuclei-INST"][0]
    inside = slice(CONTEXT, CONTEXT + DERMIS_SIZE)
    hematoxylin = rgb2hed(dermis[inside, inside])[..., 0]
    top_decile = hematoxylin >= np.quantile(hematoxylin, 0.9)
    bottom_half = hematoxylin <= np.median(hematoxylin)
    assert inner[top_decile].mean() > 0.3
    assert inner[bottom_half].mean() < 0.02


def test_glass_cells_are_background_and_dermis_cells_tissue(cmu_slide, predictor):
    rows, cols = EDGE_CELLS
    image = read_with_context(cmu_slide, EDGE, (rows * CELL, cols * CELL))
    out = predictor.predict(image)
    tissue = out["Patch-Class"][1]
    assert tissue.shape == EDGE_CELLS
    assert (tissue[:, :3] < 0.1).all(), tissue
    assert (tissue[:, 4] > 0.9).all(), tissue
    # Independently of the eye: a cell whose pixels are nearly all bright is glass.
    region = image[CONTEXT:-CONTEXT, CONTEXT:-CONTEXT]
    bright = (region.min(axis=-1) > 200).reshape(rows, CELL, cols, CELL).mean(axis=(1, 3))
    assert (tissue[bright > 0.99] < 0.1).all()
    assert (out["Nuclei-INST"][0][:, : 3 * CELL] < 0.5).all()


def test_same_values_whatever_chunk_the_region_is_cut_from(cmu_slide, predictor):
    row, col = DERMIS
    wide = predictor.predict(read_with_context(cmu_slide, (row, col), (2 * CELL, 3 * CELL)))
    shifted = predictor.predict(read_with_context(cmu_slide, (row + CELL, col + CELL), (3 * CELL, 2 * CELL)))
    for head in ("Nuclei-INST", "Nuclei-TYPE"):
        np.testing.assert_array_equal(wide[head][:, CELL:, CELL:], shifted[head][:, :CELL, : 2 * CELL])
    np.testing.assert_array_equal(wide["Patch-Class"][:, 1:, 1:], shifted["Patch-Class"][:, :1, :2])
    # Pixel heads do not depend on the cell grid at all: any offset gives the same values.
    off = predictor.predict(read_with_context(cmu_slide, (row + 37, col + 53), (CELL, CELL)))
    for head in ("Nuclei-INST", "Nuclei-TYPE"):
        np.testing.assert_array_equal(wide[head][:, 37 : 37 + CELL, 53 : 53 + CELL], off[head])


def test_input_beyond_the_radius_is_ignored(predictor, dermis, dermis_outputs):
    reach = CONTEXT - predictor.settings.radius
    noisy = np.random.default_rng(0).integers(0, 256, dermis.shape, dtype=np.uint8)
    noisy[reach:-reach, reach:-reach] = dermis[reach:-reach, reach:-reach]
    out = predictor.predict(noisy)
    for head, values in dermis_outputs.items():
        np.testing.assert_array_equal(out[head], values, err_msg=head)


def scipy_mean_capped_depth(hematoxylin: np.ndarray, levels: np.ndarray, cap: int) -> np.ndarray:
    """The nuclei depth as scipy's whole Euclidean distance transform gives it (the expectation)."""
    def depth(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1, constant_values=False)  # the pixels just outside are below every level
        return np.minimum(ndi.distance_transform_edt(padded)[1:-1, 1:-1], cap)
    return np.mean([depth(hematoxylin > level) for level in levels], axis=0)


@pytest.fixture(scope="module")
def slide_hematoxylin(cmu_slide) -> np.ndarray:
    """The whole real slide's smoothed hematoxylin, as the stain model computes it."""
    with tiffslide.TiffSlide(cmu_slide) as slide:
        image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    return smoothed_hematoxylin(image, StainSettings())


def test_depth_is_scipys_capped_distance_transform_bit_for_bit(slide_hematoxylin):
    """On the whole real slide's hematoxylin (every depth from 0 to the cap, nuclei on the image's edges),
    on an all-nucleus image, on one without nuclei and on random masks of every density."""
    s = StainSettings()
    levels = s.depth_thresholds
    rng = np.random.default_rng(23)
    cases = [slide_hematoxylin, np.ascontiguousarray(slide_hematoxylin[101:400, 57:700]), np.ones((50, 60)),
             np.zeros((7, 9)), *[(rng.random((120, 170)) < p) * 1.0 for p in (0.5, 0.9, 0.99)]]
    for hematoxylin in cases:
        for chosen in (levels, levels[:1]):
            expected = scipy_mean_capped_depth(hematoxylin, chosen, s.depth_cap)
            np.testing.assert_array_equal(mean_capped_depth(hematoxylin, chosen, s.depth_cap), expected)
    one_level = scipy_mean_capped_depth(slide_hematoxylin, levels[:1], s.depth_cap)
    assert one_level.min() == 0 and one_level.max() == s.depth_cap  # the real slide has glass, and nuclei past the cap


def test_deepest_point_nearby_is_scipys_maximum_filter_bit_for_bit(slide_hematoxylin):
    """The core search's disk maximum on the whole real slide's depth, and on images narrower than the disk
    (scipy's 'reflect' edges, mirrored again and again), with ties."""
    s = StainSettings()
    levels = s.depth_thresholds
    depth = mean_capped_depth(slide_hematoxylin, levels, s.depth_cap)
    rng = np.random.default_rng(4)
    for radius in (s.core_window, 1, 6):
        disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
        for values in (depth, rng.random((7, 3)), rng.random((1, 1)), rng.integers(0, 3, (50, 40)).astype(float), rng.random((3, 200))):
            np.testing.assert_array_equal(disk_maximum(values, disk.sum(axis=1) // 2), ndi.maximum_filter(values, footprint=disk))


def test_postprocessing_finds_one_instance_per_nucleus(dermis_outputs):
    instances = nuclei_instances(*dermis_outputs["Nuclei-INST"])
    ids = np.unique(instances)[1:]
    centroids = np.array(ndi.center_of_mass(instances > 0, instances, ids))
    low, high = COUNT_AREA
    counted = int(((centroids >= low) & (centroids < high)).all(axis=1).sum())
    assert NUCLEI_COUNTED / 2 <= counted <= NUCLEI_COUNTED * 2, counted
    found = [instances[r - 1 : r + 2, c - 1 : c + 2].max() for r, c in NUCLEUS_CENTRES]
    assert all(found) and len(set(found)) == len(NUCLEUS_CENTRES), found
    assert not any(instances[r, c] for r, c in STROMA_POINTS)


def test_postprocessing_recovers_synthetic_nuclei(tmp_path, predictor):
    slide = make_synthetic_slide(tmp_path / "synthetic.svs", size=(2 * 1584, 2 * 1296), seed=3)
    assert slide.mpp == 0.25  # halved below to the 0.5 µm/px the thresholds are tuned for
    rows, cols = 1296, 1584
    image = slide.image.reshape(rows, 2, cols, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    glass = tuple(int(v) for v in np.median(image[image.min(axis=-1) > 235], axis=0))
    padded = np.stack([np.pad(image[..., i], CONTEXT, constant_values=glass[i]) for i in range(3)], axis=-1)
    instances = nuclei_instances(*predictor.predict(padded)["Nuclei-INST"])
    truth = slide.nuclei[::2, ::2]
    ids = np.unique(instances)[1:]
    centres = np.array(ndi.center_of_mass(instances > 0, instances, ids)).round().astype(int)
    under = truth[centres[:, 0], centres[:, 1]]  # true nucleus under each found centre, 0 = none
    hits = np.bincount(under, minlength=truth.max() + 1)[np.unique(truth)[1:]]
    assert (under > 0).mean() > 0.95  # found instances sit on nuclei
    assert (hits == 1).mean() > 0.9  # true nuclei found exactly once
    assert len(ids) == pytest.approx(len(hits), rel=0.1)


def test_rejects_input_off_the_grid(predictor):
    with pytest.raises(ValueError, match="multiples of 144"):
        predictor.predict(np.zeros((2 * CONTEXT + 100, 2 * CONTEXT + CELL, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((2 * CONTEXT + CELL, 2 * CONTEXT + CELL, 3), np.float32))


def test_settings_whose_reach_exceeds_the_context_are_refused():
    with pytest.raises(ValueError, match="radius"):
        StainPredictor(StainSettings(depth_cap=CONTEXT))


def test_identity_is_stable_across_processes_and_tracks_settings(predictor):
    script = "from cerberus_batch.model.stain import StainPredictor; print(StainPredictor().identity)"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == predictor.identity
    assert StainPredictor(StainSettings(hematoxylin_threshold=0.1)).identity != predictor.identity
