"""`cerberus-batch tile`: real H&E crops of CMU-1 in a folder → maps, tables and overlays per image."""

from __future__ import annotations

import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from cerberus_batch.cli import main
from cerberus_batch.grid import CELL, CONTEXT
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.pipeline.tile import reflect_padded
from cerberus_batch.quantisation import dequantise
from cerberus_batch.slides import open_slide
from cerberus_batch.storage.atomic import MARKER
from cerberus_batch.storage.colours import instance_colour
from cerberus_batch.storage.zarr_maps import map_arrays

CROP = (800, 1200, 700, 500)  # x, y, w, h in CMU-1 level-0 px (0.499 µm/px: read as 0.5)
STEP = 1 / 255 + 1e-6


def test_tile_mode_loads_no_dask():
    """Tile mode runs in one process: importing it must not load Dask's distributed scheduler."""
    check = "import sys, cerberus_batch.pipeline.tile; print(sorted(m for m in ('distributed', 'dask') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


@pytest.fixture(scope="module")
def crop(cmu_slide) -> np.ndarray:
    x, y, w, h = CROP
    return open_slide(cmu_slide).read_level(0, x, y, w, h)


@pytest.fixture(scope="module")
def stain_run(tmp_path_factory, crop):
    """A folder with the crop, the same crop twice as large, a broken file and a name clash."""
    folder = tmp_path_factory.mktemp("tiles")
    (folder / "big").mkdir()
    Image.fromarray(crop).save(folder / "crop.png")
    Image.fromarray(crop).resize((2 * crop.shape[1], 2 * crop.shape[0]), Image.Resampling.NEAREST).save(folder / "big" / "crop2x.tif")
    (folder / "broken.png").write_bytes(b"not a png at all")
    Image.fromarray(crop).save(folder / "crop.tiff")  # same output folder as crop.png, which comes first
    out = tmp_path_factory.mktemp("tile-out")
    result = CliRunner().invoke(main, ["tile", "--model-kind", "stain", "--input-dir", str(folder), "--output-dir", str(out)])
    # --mpp 0.25 for the whole folder would resample crop.png too, so the 2x copy runs on its own.
    big = CliRunner().invoke(main, ["tile", "--model-kind", "stain", "--input-dir", str(folder / "big"),
                                    "--output-dir", str(out / "resampled"), "--mpp", "0.25"])
    return folder, out, result, big


def test_reflect_padding_matches_the_reference_widths():
    rng = np.random.default_rng(3)
    for h, w in ((288, 288), (100, 50), (500, 700), (145, 431)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # Spec §7.2: pad 152 before, last + 448 - size after, numpy reflect; the model reads last + 304.
        last_h, last_w = ((int(np.ceil((size - CELL) / CELL)) + 1) * CELL for size in (h, w))
        reference = np.pad(image, ((152, last_h + 448 - h), (152, last_w + 448 - w), (0, 0)), mode="reflect")
        padded = reflect_padded(image)
        assert padded.shape == (last_h + 2 * CONTEXT, last_w + 2 * CONTEXT, 3)
        assert (padded == reference[: padded.shape[0], : padded.shape[1]]).all()


def test_bad_image_is_reported_and_the_others_finish(stain_run):
    folder, out, result, _ = stain_run
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("FAILED") and "broken.png" in line and "not a readable image" in line for line in lines)
    assert any(line.startswith("FAILED") and "crop.tiff" in line and "same output folder" in line for line in lines)
    assert "2/4 images done" in result.output
    for name in ("crop", "big/crop2x"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            MARKER, "glands.parquet", "lumens.parquet", "maps.zarr", "nuclei.parquet", "overlay.png"]
    assert not (out / "broken").exists()
    assert not [p for p in out.rglob(".*") if p.name != MARKER], "no partial folders or lock left behind"


def test_maps_equal_the_model_on_the_slide_away_from_the_padding(stain_run, cmu_slide, crop):
    _, out, _, _ = stain_run
    group = zarr.open_group(out / "crop" / "maps.zarr", mode="r")
    h, w = crop.shape[:2]
    assert group.attrs["image_shape"] == [h, w]
    grid = (-(-h // CELL) * CELL, -(-w // CELL) * CELL)
    maps = map_arrays(group)
    assert maps["nuclei_prob"].shape == (2, *grid)
    stored = dequantise(maps["nuclei_prob"][:])
    assert (stored[:, h:] == 0).all() and (stored[:, :, w:] == 0).all()
    # Pixels further than the model's reach from the crop's edge saw only real slide pixels,
    # so they equal the model run straight on the slide around the crop.
    x, y = CROP[:2]
    out_h, out_w = grid
    direct = StainPredictor().predict(
        open_slide(cmu_slide).read_level(0, x - CONTEXT, y - CONTEXT, out_w + 2 * CONTEXT, out_h + 2 * CONTEXT)
    )["Nuclei-INST"]
    r = StainPredictor().settings.radius
    inner = (slice(None), slice(r, h - r), slice(r, w - r))
    assert np.abs(stored[inner] - direct[inner]).max() <= STEP


def test_tables_in_image_pixels_and_overlay_outlines(stain_run, crop):
    _, out, _, _ = stain_run
    h, w = crop.shape[:2]
    nuclei = gpd.read_parquet(out / "crop" / "nuclei.parquet")
    assert len(nuclei) > 100
    xmin, ymin, xmax, ymax = nuclei.total_bounds
    assert xmin >= 0 and ymin >= 0 and xmax <= w and ymax <= h
    for kind in ("glands", "lumens"):  # the stain model has no gland or lumen heads
        table = gpd.read_parquet(out / "crop" / f"{kind}.parquet")
        assert len(table) == 0 and "geometry" in table.columns
    overlay = np.asarray(Image.open(out / "crop" / "overlay.png").convert("RGB"))
    assert overlay.shape == crop.shape
    changed = (overlay != crop).any(axis=-1)
    assert (overlay[changed] == instance_colour("nuclei", "nucleus")).all()
    # Each nucleus's outline is drawn: next to its first vertex (a px corner on the outline) a px is coloured.
    first = np.array([g.exterior.coords[0] for g in nuclei.geometry], dtype=int)
    drawn = [changed[max(y - 1, 0) : y + 1, max(x - 1, 0) : x + 1].any() for x, y in first]
    assert all(drawn)


def test_mpp_resamples_and_keeps_the_images_own_pixels(stain_run):
    _, out, _, big = stain_run
    assert big.exit_code == 0, big.output
    # The 2x copy at 0.25 µm/px resamples (2x2 means) back to the crop exactly: same nuclei, twice the coordinates.
    once = gpd.read_parquet(out / "crop" / "nuclei.parquet")
    twice = gpd.read_parquet(out / "resampled" / "crop2x" / "nuclei.parquet")
    assert len(once) == len(twice)
    assert np.allclose(twice["centroid_x"], 2 * once["centroid_x"]) and np.allclose(twice["centroid_y"], 2 * once["centroid_y"])
    assert (twice["area_um2"] == once["area_um2"]).all()
    group = zarr.open_group(out / "resampled" / "crop2x" / "maps.zarr", mode="r")
    assert group.attrs["transform"]["scale_x"] == 2.0
    assert np.asarray(Image.open(out / "resampled" / "crop2x" / "overlay.png")).shape[:2] == (1000, 1400)


def test_cerberus_model_post_processes_glands_at_full_resolution(tmp_path, parity_model_dir, crop):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(crop[:288, :288]).save(folder / "small.png")
    result = CliRunner().invoke(main, ["tile", "--model", str(parity_model_dir), "--input-dir", str(folder),
                                       "--output-dir", str(tmp_path / "out"), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    maps = map_arrays(zarr.open_group(tmp_path / "out" / "small" / "maps.zarr", mode="r"))
    for name in ("gland_prob", "lumen_prob", "nuclei_prob"):
        assert maps[name].shape == (2, 288, 288)
    assert maps["gland_class"].shape == (288, 288) and maps["tissue_class"].shape == (2, 2)
    # Tile-mode gland rules at ds = 1: foreground inner - (contour > 0.5) > 0.55, objects of >= 1000 px.
    inner, contour = dequantise(maps["gland_prob"][:])
    labels, n = ndimage.label((inner - (contour > 0.5)) > 0.55)
    expected = int((np.bincount(labels.ravel())[1:] >= 1000).sum())
    glands = gpd.read_parquet(tmp_path / "out" / "small" / "glands.parquet")
    assert len(glands) == expected
    assert (glands["area_px"] >= 1000).all()
    assert set(glands["class_name"]) <= {"nolabel", "gland", "surface-epi"}


def test_cerberus_kind_needs_a_model(tmp_path):
    """The default model kind without --model: one line saying what folder to get and how to check it, or to
    run the stain model; the stain run it suggests then works on the same folder."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "in" / "a.png")
    command = ["tile", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o")]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and line.startswith("Error: --model is required for --model-kind cerberus"), line
    for named in ("weights.tar", "settings.yml", "Graham et al.", "cerberus-batch check-model", "--model-kind stain"):
        assert named in line, named
    assert not (tmp_path / "o").exists()
    stain = CliRunner().invoke(main, [*command, "--model-kind", "stain"])
    assert stain.exit_code == 0 and stain.output.strip().endswith("1/1 images done"), stain.output
