"""Bad slides and masks: each gives a one-line error that starts with (or names) the file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from cerberus_batch.errors import SettingError
from cerberus_batch.slides import SlideError, open_slide, plan_chunks, tissue_mask
from cerberus_batch.testing.slides import make_synthetic_slide


def assert_one_line_naming(err: pytest.ExceptionInfo, *paths) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{paths[0]}: ")
    for path in paths[1:]:
        assert str(path) in message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.svs"
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert_one_line_naming(err, path)
    assert "not found" in str(err.value)


def test_text_file_renamed_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("patient list\nnot an image\n")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert_one_line_naming(err, path)


@pytest.fixture(scope="module")
def svs_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("svs") / "whole.svs"
    make_synthetic_slide(path, size=(1200, 1000), seed=1)
    return path.read_bytes()


# Cut inside the baseline's tiles, between pages (levels silently lost), and in the last tile.
@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9, 0.999])
def test_truncated_tiff(tmp_path, svs_bytes, kept):
    path = tmp_path / "cut.svs"
    path.write_bytes(svs_bytes[: int(len(svs_bytes) * kept)])
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert_one_line_naming(err, path)


def test_no_mpp_and_no_override(tmp_path):
    path = tmp_path / "tile.png"
    Image.fromarray(np.full((50, 60, 3), 200, np.uint8)).save(path)
    slide = open_slide(path)
    assert slide.info.mpp is None
    with pytest.raises(SlideError) as err:
        slide.at_mpp(0.5)
    assert_one_line_naming(err, path)
    assert str(err.value).endswith("has no microns-per-pixel metadata; pass --mpp-override")  # a cohort names its own fix (test_mpp_rule)
    # The override is the documented way out.
    assert open_slide(path, mpp=0.5).at_mpp(0.5).shape == (50, 60)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_refused(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    pixels = np.arange(3000, dtype=np.uint16).reshape(50, 60) * 20
    if suffix == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        Image.fromarray(pixels).save(path)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert_one_line_naming(err, path)
    assert "8-bit" in str(err.value)


@pytest.fixture
def png_slide(tmp_path):
    path = tmp_path / "slide.png"
    Image.fromarray(np.full((300, 400, 3), 230, np.uint8)).save(path)
    with open_slide(path, mpp=0.5) as slide:
        yield path, slide.at_mpp(0.5)


def test_mask_with_wrong_aspect_ratio(tmp_path, png_slide):
    path, view = png_slide
    mask_path = tmp_path / "mask.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(mask_path)  # 1:1 against 4:3
    with pytest.raises(SlideError) as err:
        tissue_mask(view, mask_path)
    assert_one_line_naming(err, mask_path, path)


def test_mask_within_two_percent_is_accepted(tmp_path, png_slide):
    _, view = png_slide
    mask_path = tmp_path / "mask.png"
    Image.fromarray(np.full((31, 41), 1, np.uint8)).save(mask_path)  # 41/31 is 0.8% off 4/3
    mask = tissue_mask(view, mask_path)
    assert mask.array.all()
    assert (mask.downsample, mask.downsample_x) == (300 / 31, 400 / 41)


def test_missing_mask_file(tmp_path, png_slide):
    path, view = png_slide
    with pytest.raises(SlideError) as err:
        tissue_mask(view, tmp_path / "nope.png")
    assert_one_line_naming(err, tmp_path / "nope.png", path)


def test_all_zero_mask_gives_an_empty_plan_quietly(tmp_path, png_slide):
    # No warning: the run's NOTE and validate's row say it, once (tests/test_blank_slides.py).
    path, view = png_slide
    mask_path = tmp_path / "empty.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(mask_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = tissue_mask(view, mask_path)
        plan = plan_chunks(view, mask, chunk=288)
    assert plan.chunks == [] and plan.cells == 0 and plan.tissue_mm2 == 0
    assert plan.grid == (2, 2)


@pytest.mark.parametrize("chunk", [0, 100, 2000, -144])
def test_chunk_must_be_a_multiple_of_the_cell(png_slide, chunk):
    _, view = png_slide
    mask = tissue_mask(view, "none")
    with pytest.raises(SettingError, match=f"chunk: {chunk} is not a positive multiple of the 144-px cell"):
        plan_chunks(view, mask, chunk=chunk)
