"""Tissue masks and chunk plans on the real CMU slide and on hand-made masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tiffslide
from PIL import Image
from scipy import ndimage

from cerberus_batch.slides import ChunkPlan, TissueMask, open_slide, plan_chunks, tissue_mask


@pytest.fixture(scope="module")
def cmu(cmu_slide):
    with open_slide(cmu_slide) as slide:
        view = slide.at_mpp(0.5)
        yield view, tissue_mask(view, "auto")


@pytest.fixture(scope="module")
def cmu_pixels(cmu_slide) -> np.ndarray:
    with tiffslide.TiffSlide(cmu_slide) as reference:
        return reference.read_region((0, 0), 0, reference.dimensions, as_array=True)


def upsampled(mask: TissueMask, shape: tuple[int, int]) -> np.ndarray:
    """The mask at processing resolution: processing px (y, x) lies in mask px (y // dy, x // dx)."""
    rows = np.minimum((np.arange(shape[0]) / mask.downsample).astype(int), mask.array.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) / mask.downsample_x).astype(int), mask.array.shape[1] - 1)
    inside = (np.arange(shape[0]) < mask.array.shape[0] * mask.downsample)[:, None] & (
        np.arange(shape[1]) < mask.array.shape[1] * mask.downsample_x
    )[None, :]
    return mask.array[np.ix_(rows, cols)] & inside


def kept_cells(plan: ChunkPlan) -> np.ndarray:
    """Cells (slide-wide row, col) the plan runs, from its chunks and their empty cells."""
    h, w = plan.shape
    kept = np.zeros((math.ceil(h / plan.cell), math.ceil(w / plan.cell)), bool)
    for chunk in plan.chunks:
        r0, c0 = chunk.y // plan.cell, chunk.x // plan.cell
        kept[r0 : r0 + chunk.h // plan.cell, c0 : c0 + chunk.w // plan.cell] = True
        for r, c in chunk.empty_cells:
            kept[r0 + r, c0 + c] = False
    return kept


def assert_tissue_covered(plan: ChunkPlan, mask: TissueMask) -> None:
    kept = kept_cells(plan)
    tissue = upsampled(mask, (kept.shape[0] * plan.cell, kept.shape[1] * plan.cell))
    cells_with_tissue = tissue.reshape(kept.shape[0], plan.cell, kept.shape[1], plan.cell).any(axis=(1, 3))
    assert not (cells_with_tissue & ~kept).any()
    assert kept.sum() == plan.cells


def test_cmu_automatic_mask(cmu, cmu_pixels, tmp_path):
    view, mask = cmu
    assert mask.source == "auto"
    assert 0.2 <= mask.tissue_fraction <= 0.7
    # About 8 µm per mask pixel, from a rendering of the slide, not full resolution.
    assert 6 <= mask.downsample * view.mpp <= 16
    brightness = cmu_pixels.astype(float).mean(axis=2)
    tissue = upsampled(mask, brightness.shape)
    assert brightness[tissue].mean() < brightness[~tissue].mean() - 40
    assert brightness[~tissue].mean() > 220  # glass
    path = tmp_path / "mask.png"
    mask.save_png(path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, mask.array)


def test_cmu_plan_is_deterministic_and_round_trips(cmu):
    view, mask = cmu
    plan = plan_chunks(view, mask, slide_id="cmu")
    assert plan == plan_chunks(view, tissue_mask(view, "auto"), slide_id="cmu")
    text = plan.to_json()
    assert ChunkPlan.from_json(text) == plan
    assert ChunkPlan.from_json(text).to_json() == text
    assert [c.index for c in plan.chunks] == list(range(len(plan.chunks)))
    assert [(c.row, c.col) for c in plan.chunks] == sorted((c.row, c.col) for c in plan.chunks)
    assert plan.transform == view.transform and plan.mpp == view.mpp


def test_cmu_plan_covers_every_tissue_pixel(cmu):
    view, mask = cmu
    for chunk in (432, 2016):
        plan = plan_chunks(view, mask, chunk=chunk)
        assert_tissue_covered(plan, mask)
        assert 0 < plan.cells < math.ceil(2967 / 144) * math.ceil(2220 / 144)


def test_given_mask_with_fractional_downsample_is_covered(cmu, tmp_path):
    view, _ = cmu
    # 2220x2967 slide, 173x231 mask: 12.83 / 12.84 processing px per mask px.
    rng = np.random.default_rng(5)
    blobs = ndimage.gaussian_filter(rng.standard_normal((231, 173)), 6) > 0.05
    path = tmp_path / "mask.png"
    Image.fromarray(blobs.astype(np.uint8) * 255).save(path)
    mask = tissue_mask(view, path)
    assert mask.downsample == pytest.approx(2967 / 231) and mask.downsample_x == pytest.approx(2220 / 173)
    np.testing.assert_array_equal(mask.array, blobs)
    plan = plan_chunks(view, mask, chunk=288)
    assert_tissue_covered(plan, mask)


def test_no_mask_keeps_every_chunk_clipped_to_the_cell_grid(cmu):
    view, _ = cmu
    plan = plan_chunks(view, tissue_mask(view, "none"))
    # 2967x2220 px → 21x16 cells → 2x2 chunks of 14 cells, the last ones clipped.
    assert plan.grid == (2, 2)
    assert [(c.x, c.y, c.w, c.h) for c in plan.chunks] == [
        (0, 0, 2016, 2016),
        (2016, 0, 2 * 144, 2016),
        (0, 2016, 2016, 7 * 144),
        (2016, 2016, 2 * 144, 7 * 144),
    ]
    assert all(c.empty_cells == [] for c in plan.chunks)
    assert plan.cells == 21 * 16
    slide_mm2 = 2967 * 2220 * 0.499**2 / 1e6
    assert plan.tissue_mm2 == pytest.approx(slide_mm2, rel=0.02)
    summary = plan.summary()
    assert summary["chunks_kept"] == 4 and summary["cells_total"] == 21 * 16
    assert plan.input_px(None) == (  # whole chunks with their context
        (2016 + 304) ** 2 + (288 + 304) * (2016 + 304) + (2016 + 304) * (1008 + 304) + (288 + 304) * (1008 + 304)
    )


def single_pixel_mask(shape, pixel, downsample) -> TissueMask:
    array = np.zeros(shape, bool)
    array[pixel] = True
    return TissueMask(array, downsample, "test")


@pytest.mark.parametrize(
    ("downsample", "pixel", "cells"),
    [
        (16, (9, 9), {(1, 1)}),  # proc px [144, 160): cell 1 only
        (16, (8, 8), {(0, 0)}),  # proc px [128, 144): cell 0 only (touching the edge is not overlap)
        (10, (14, 0), {(0, 0), (1, 0)}),  # proc px [140, 150): straddles cells 0 and 1
        (50, (2, 5), {(0, 1), (0, 2), (1, 1), (1, 2)}),  # rows [100, 150): cells 0, 1; cols [250, 300): cells 1, 2
    ],
)
def test_a_mask_pixel_counts_for_every_cell_it_overlaps(cmu, downsample, pixel, cells):
    view, _ = cmu
    shape = (math.ceil(2967 / downsample), math.ceil(2220 / downsample))
    plan = plan_chunks(view, single_pixel_mask(shape, pixel, downsample), chunk=144)
    assert {(c.row, c.col) for c in plan.chunks} == cells
    assert plan.cells == len(cells)
