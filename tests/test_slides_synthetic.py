"""Synthetic test slides: file layout, ground-truth content and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.measure import regionprops

from cerberus_batch.slides import open_slide, plan_chunks, tissue_mask
from cerberus_batch.testing.slides import make_synthetic_slide


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "synthetic.svs")


def test_file_is_an_aperio_style_pyramid(synthetic):
    with tifffile.TiffFile(synthetic.path) as tiff:
        first = tiff.pages[0]
        assert first.description.startswith("Aperio Image Library")
        assert "|MPP = 0.25" in first.description and "|AppMag = 40" in first.description
        assert (first.tilewidth, first.tilelength) == (256, 256)
        assert first.compression == tifffile.COMPRESSION.JPEG
        assert not tiff.pages[1].is_tiled  # the thumbnail, as Aperio writes it
    with open_slide(synthetic.path) as slide:
        info = slide.info
        assert info.vendor == "aperio" and info.mpp == (0.25, 0.25) and info.objective_power == 40
        assert info.dimensions == (6000, 5000)
        assert info.level_downsamples == (1.0, 4.0, 16.0)
        decoded = slide.read_level(0, 0, 0, 6000, 5000)
    mse = np.mean((decoded.astype(float) - synthetic.image) ** 2)
    assert 10 * np.log10(255**2 / mse) >= 35  # JPEG barely changes the ground truth


def test_about_thirty_percent_glass(synthetic):
    bright = (synthetic.image.min(axis=2) > 230) & (synthetic.lumens == 0)
    assert 0.22 <= bright.mean() <= 0.38


def test_nuclei_have_realistic_sizes_and_known_centres(synthetic):
    props = regionprops(synthetic.nuclei)
    assert len(props) == len(synthetic.centres) > 500
    diameters = np.array([p.equivalent_diameter_area for p in props])
    assert diameters.min() >= 23 and diameters.max() <= 49  # 6-12 µm at 0.25 µm/px
    centroids = np.array([(p.centroid[1] + 0.5, p.centroid[0] + 0.5) for p in props])
    np.testing.assert_allclose(centroids, np.array(synthetic.centres), atol=0.6)
    # Nuclei are dark purple on pink stroma.
    nucleus_colour = synthetic.image[synthetic.nuclei > 0].mean(axis=0)
    assert nucleus_colour[2] > nucleus_colour[1] and nucleus_colour.mean() < 110


def test_few_nuclei_touch(synthetic):
    touching = 0
    for label, box in enumerate(ndimage.find_objects(synthetic.nuclei), start=1):
        window = synthetic.nuclei[box[0].start - 2 : box[0].stop + 2, box[1].start - 2 : box[1].stop + 2]
        grown = ndimage.binary_dilation(window == label)
        touching += bool(np.setdiff1d(window[grown], [0, label]).size)
    assert 0.005 * len(synthetic.centres) <= touching <= 0.06 * len(synthetic.centres)


def test_glands_ring_their_lumens_and_one_crosses_chunks(synthetic):
    glands, lumens = synthetic.glands, synthetic.lumens
    assert glands.max() >= 3
    assert ((lumens > 0) <= (glands > 0)).all()
    np.testing.assert_array_equal(lumens[lumens > 0], glands[lumens > 0])
    widths = [box[1].stop - box[1].start for box in ndimage.find_objects(glands)]
    assert max(widths) > 2000  # > 1,000 processing px at 0.5 µm/px
    # Lumens are pale, nuclei line the epithelium.
    assert synthetic.image[lumens > 0].min(axis=1).mean() > 220
    epithelium = (glands > 0) & (lumens == 0)
    assert (synthetic.nuclei[epithelium] > 0).mean() > 0.05


def test_automatic_mask_finds_the_tissue(synthetic):
    with open_slide(synthetic.path) as slide:
        view = slide.at_mpp(0.5)
        mask = tissue_mask(view)
        plan = plan_chunks(view, mask)
    assert mask.tissue_fraction >= 0.62
    # Every nucleus centre lies in tissue the mask finds.
    for x, y in synthetic.centres[::10]:
        px, py = view.transform.from_level0(x, y)
        assert mask.array[int(py / mask.downsample), int(px / mask.downsample_x)]
    assert len(plan.chunks) == 4


def test_deterministic_given_the_seed(tmp_path):
    a, b, c = (make_synthetic_slide(tmp_path / name / "slide.svs", size=(900, 700), seed=seed)
               for name, seed in (("a", 4), ("b", 4), ("c", 5)) if (tmp_path / name).mkdir() is None)
    assert a.path.read_bytes() == b.path.read_bytes()
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    assert a.centres == b.centres
    assert not np.array_equal(a.image, c.image)
