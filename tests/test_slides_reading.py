"""Reading slides at the processing resolution: real SVS, synthetic SVS with ground truth, other formats."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import tiffslide
from PIL import Image
from scipy import ndimage

from cerberus_batch.slides import Transform, open_slide
from cerberus_batch.slides.tiles import TileCache, TileGrid
from cerberus_batch.testing.slides import make_synthetic_slide


def box_mean(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[0] // k, image.shape[1] // k
    return image[: h * k, : w * k].reshape(h, k, w, k, -1).mean(axis=(1, 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "synthetic.svs", seed=0)


def test_cmu_metadata_and_native_read(cmu_slide):
    with open_slide(cmu_slide) as slide:
        info = slide.info
        assert info.mpp == pytest.approx((0.499, 0.499))
        assert info.mpp_source == "metadata"
        assert info.vendor == "aperio"
        assert info.objective_power == 20
        assert info.dimensions == (2220, 2967)
        assert info.level_count == 1
        view = slide.at_mpp(0.5)
        # 0.499 is within 2% of 0.5: level 0 as is, with the true scale recorded.
        assert view.native and view.level == 0
        assert view.shape == (2967, 2220)
        assert view.transform == Transform(1.0, 1.0)
        assert view.mpp == pytest.approx(0.499)
        region = view.read(300, 700, 500, 400)
    with tiffslide.TiffSlide(cmu_slide) as reference:
        expected = reference.read_region((300, 700), 0, (500, 400), as_array=True)
    np.testing.assert_array_equal(region, expected)


def test_synthetic_read_at_half_mpp_matches_ground_truth(synthetic):
    with open_slide(synthetic.path) as slide:
        assert slide.info.mpp == (0.25, 0.25)
        assert slide.info.level_downsamples == (1.0, 4.0, 16.0)
        view = slide.at_mpp(0.5)
        assert not view.native and view.level == 0
        h, w = view.shape
        assert (h, w) == (synthetic.image.shape[0] // 2, synthetic.image.shape[1] // 2)
        image = view.read(0, 0, w, h)
    assert image.dtype == np.uint8 and image.shape == (h, w, 3)
    assert psnr(image, box_mean(synthetic.image, 2)) >= 30


def test_coarser_targets_use_the_pyramid(synthetic):
    with open_slide(synthetic.path) as slide:
        native = slide.at_mpp(1.0)  # level 1 exactly
        resampled = slide.at_mpp(2.0)  # level 1, halved
        assert native.native and native.level == 1
        assert not resampled.native and resampled.level == 1
        assert resampled.transform == Transform(8.0, 8.0)
        h, w = resampled.shape
        image = resampled.read(0, 0, w, h)
    assert psnr(image, box_mean(synthetic.image, 8)[:h, :w]) >= 30


def isolated_nuclei(synthetic, count: int) -> list[int]:
    """Labels of nuclei with no other nucleus within 30 level-0 px of their bounding box."""
    chosen = []
    for label, box in enumerate(ndimage.find_objects(synthetic.nuclei), start=1):
        rows = slice(max(box[0].start - 30, 0), box[0].stop + 30)
        cols = slice(max(box[1].start - 30, 0), box[1].stop + 30)
        if set(np.unique(synthetic.nuclei[rows, cols])) == {0, label} and not synthetic.glands[rows, cols].any():
            chosen.append(label)
        if len(chosen) == count:
            break
    return chosen


@pytest.mark.parametrize("mpp", [0.5, 0.6])  # box means, and sub-pixel resampling
def test_nuclei_appear_at_transformed_positions(synthetic, mpp):
    with open_slide(synthetic.path) as slide:
        view = slide.at_mpp(mpp)
        for label in isolated_nuclei(synthetic, 25):
            x0, y0 = synthetic.centres[label - 1]
            px, py = view.transform.from_level0(x0, y0)
            left, top = int(px) - 20, int(py) - 20
            region = view.read(left, top, 40, 40)
            dark = region.astype(int).mean(axis=2) < 150
            blobs, _ = ndimage.label(dark)
            blob = blobs[20, 20]
            assert blob, f"nucleus {label} not found near ({px:.1f}, {py:.1f})"
            rows, cols = np.nonzero(blobs == blob)
            # Pixel (i, j) spans [j, j + 1): its centre is j + 0.5.
            found = (left + cols.mean() + 0.5, top + rows.mean() + 0.5)
            assert found == pytest.approx((px, py), abs=1.0)


def test_regions_outside_the_slide_are_white(synthetic):
    with open_slide(synthetic.path) as slide:
        view = slide.at_mpp(0.5)
        h, w = view.shape
        straddling = view.read(w - 60, h - 40, 100, 100)
        inside = view.read(w - 60, h - 40, 60, 40)
        outside = view.read(-500, -300, 64, 64)
    assert (straddling[:, 60:] == 255).all() and (straddling[40:, :] == 255).all()
    np.testing.assert_array_equal(straddling[:40, :60], inside)
    assert (outside == 255).all()


def test_resampled_reads_agree_at_seams(synthetic):
    # 0.6 µm/px is no integer factor of 0.25: anti-aliased resampling path.
    with open_slide(synthetic.path) as slide:
        view = slide.at_mpp(0.6)
        whole = view.read(1000, 900, 300, 200)
        parts = np.concatenate([view.read(1000, 900, 130, 200), view.read(1130, 900, 170, 200)], axis=1)
        assert view.shape == (round(5000 * 0.25 / 0.6), round(6000 * 0.25 / 0.6))
    assert np.abs(whole.astype(int) - parts.astype(int)).max() <= 1
    # Independent expectation: scikit-image's anti-aliased resize of the ground truth.
    from skimage.transform import resize

    box = synthetic.image[int(900 * 2.4) : int(1100 * 2.4), int(1000 * 2.4) : int(1300 * 2.4)]
    expected = resize(box, (200, 300), anti_aliasing=True, preserve_range=True)
    assert psnr(whole, expected) >= 30


def test_transform_round_trip_and_arrays():
    transform = Transform(2.0, 2.5, 10.0, -4.0)
    xs, ys = np.array([0.0, 3.5, 100.0]), np.array([1.0, 2.0, 7.25])
    lx, ly = transform.to_level0(xs, ys)
    np.testing.assert_allclose(lx, [10.0, 17.0, 210.0])
    np.testing.assert_allclose(ly, [-1.5, 1.0, 14.125])
    back = transform.from_level0(lx, ly)
    np.testing.assert_allclose(back[0], xs)
    np.testing.assert_allclose(back[1], ys)
    assert Transform.from_dict(transform.to_dict()) == transform


def pyramid_levels(image: np.ndarray) -> list[np.ndarray]:
    return [image, box_mean(image, 2).round().astype(np.uint8), box_mean(image, 4).round().astype(np.uint8)]


@pytest.fixture(scope="module")
def base_image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return ndimage.uniform_filter(rng.integers(0, 256, (600, 800, 3)).astype(np.uint8), size=(5, 5, 1))


def test_ome_tiff_with_subifds(tmp_path, base_image):
    path = tmp_path / "slide.ome.tif"
    levels = pyramid_levels(base_image)
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(levels[0], subifds=2, tile=(256, 256), photometric="rgb",
                   metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        for level in levels[1:]:
            tiff.write(level, subfiletype=1, tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.info.vendor == "ome"
        assert slide.info.mpp == (0.25, 0.25)
        assert slide.info.level_dimensions == ((800, 600), (400, 300), (200, 150))
        view = slide.at_mpp(0.5)
        assert view.native and view.level == 1
        np.testing.assert_array_equal(view.read(0, 0, 400, 300), levels[1])


def test_pyramidal_tiff_pages_with_resolution_tags(tmp_path, base_image):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tiff:
        for i, level in enumerate(pyramid_levels(base_image)):
            tiff.write(level, tile=(128, 128), photometric="rgb", subfiletype=1 if i else 0,
                       resolution=(1e4 / (0.25 * 2**i),) * 2, resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.info.level_count == 3
        assert slide.info.mpp == pytest.approx((0.25, 0.25))
        view = slide.at_mpp(0.5)
        image = view.read(0, 0, 400, 300)
    # Exact 2x2 box means of level 0 (or the stored level 1, itself a box mean).
    assert np.abs(image.astype(int) - box_mean(base_image, 2)).max() <= 1


def test_plain_png_and_jpeg_are_single_level_slides(tmp_path, base_image):
    png, jpeg = tmp_path / "tile.png", tmp_path / "tile.jpg"
    Image.fromarray(base_image).save(png)
    Image.fromarray(base_image).save(jpeg, quality=95)
    with open_slide(png, mpp=0.5) as slide:
        assert slide.info.level_count == 1 and slide.info.mpp_source == "override"
        view = slide.at_mpp(0.5)
        assert view.native and view.shape == (600, 800)
        np.testing.assert_array_equal(view.read(0, 0, 800, 600), base_image)
    with open_slide(jpeg, mpp=0.25) as slide:
        image = slide.at_mpp(0.5).read(0, 0, 400, 300)
    assert psnr(image, box_mean(base_image, 2)) >= 30


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[:, :10, 3] = 0  # transparent
    rgba[:, 10:, 3] = 128  # half
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path, mpp=0.5) as slide:
        image = slide.at_mpp(0.5).read(0, 0, 20, 10).astype(int)
    assert (image[:, :10] == 255).all()
    half = 128 / 255
    expected = np.round(np.array([200, 100, 0]) * half + 255 * (1 - half))
    assert np.abs(image[:, 10:] - expected).max() <= 1


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_greyscale_is_converted_to_rgb(tmp_path, suffix):
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    path = tmp_path / f"grey{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, grey, photometric="minisblack")
    else:
        Image.fromarray(grey).save(path)
    with open_slide(path, mpp=0.5) as slide:
        image = slide.at_mpp(0.5).read(0, 0, 20, 10)
    assert image.shape == (10, 20, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_thumbnail_is_the_same_in_strips(synthetic, monkeypatch):
    from cerberus_batch.slides import view

    with open_slide(synthetic.path) as slide:
        whole = slide.thumbnail(1000)
        monkeypatch.setattr(view, "STRIP_PIXELS", 200_000)  # forces many strips
        strips = slide.thumbnail(1000)
    assert whole.shape == (834, 1000, 3)  # 6 level-0 px per thumbnail px
    assert np.abs(whole.astype(int) - strips).max() <= 1
    assert psnr(whole[:833], box_mean(synthetic.image, 6)) >= 28


def tiffslide_region(path, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    with tiffslide.TiffSlide(path) as reference:
        return np.asarray(reference.zarr_group[str(level)][y0:y1, x0:x1])


@pytest.mark.parametrize("layout", ["tiled rgb", "tiled grey", "strips"])
def test_tile_by_tile_reads_match_tiffslide(tmp_path, base_image, cmu_slide, layout):
    """Levels read tile by tile (`slides.tiles`) give tiffslide's pixels: regions across tile seams and
    the level's ragged last tiles, JPEG (CMU) and deflate tiles, grey; strips take tiffslide's own path."""
    path = tmp_path / "slide.tif"
    image = base_image[..., 0] if layout == "tiled grey" else base_image
    tile = None if layout == "strips" else (128, 128)
    tifffile.imwrite(path, image, tile=tile, compression="zlib", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    regions = [(0, 0, 800, 600), (100, 120, 300, 140), (127, 127, 129, 129), (700, 500, 800, 600)]
    for slide_path in [path] + ([cmu_slide] if layout == "tiled rgb" else []):
        with open_slide(slide_path) as slide:
            assert (slide._source._grids[0] is None) == (layout == "strips")
            for x0, y0, x1, y1 in regions:
                expected = tiffslide_region(slide_path, 0, x0, y0, x1, y1)
                expected = np.repeat(expected[..., None], 3, axis=2) if expected.ndim == 2 else expected
                np.testing.assert_array_equal(slide.read_level(0, x0, y0, x1 - x0, y1 - y0), expected)


def test_cached_tiles_give_tiffslides_pixels_within_the_cache_bound(cmu_slide):
    """Overlapping reads in raster order, as neighbouring chunks' context margins are, take tiles decoded by
    an earlier read from the slide's tile cache: the pixels stay tiffslide's, and the cache never holds
    more than its bound however much of the slide is read."""
    bound = 2 * 240 * 240 * 3 * 4  # 8 of CMU's 240-px RGB tiles
    with tiffslide.TiffSlide(cmu_slide) as reference:
        cache = TileCache(bound)
        grid = TileGrid.of(reference.ts_tifffile.series[0], 0, cache)
        width, height = reference.dimensions
        hits = 0
        for y in range(0, height, 500):
            for x in range(0, width, 500):
                x0, y0, x1, y1 = max(x - 100, 0), max(y - 100, 0), min(x + 600, width), min(y + 600, height)
                hits += sum(cache.get((grid.key, i)) is not None for i in grid.tile_indices(x0, y0, x1, y1))
                expected = np.asarray(reference.zarr_group["0"][y0:y1, x0:x1])
                np.testing.assert_array_equal(grid.read(x0, y0, x1, y1), expected)
                assert cache._tiles.currsize <= bound
    assert hits > 0  # the margins shared with the chunk before came from the cache
