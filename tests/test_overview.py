"""QC overview PNG of a real slide, made by the pipeline's own tasks (stain model, no Dask)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr
from PIL import Image

from cerberus_batch.grid import CELL
from cerberus_batch.overview import HEADER, LEGEND_WIDTH, MARGIN, SIZE, write_overview
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.pipeline.work import (
    border_task, chunk_instances_task, infer_chunk_task, merge_slide_task, overview_task, plan_slide_task,
)
from cerberus_batch.slides import Transform
from cerberus_batch.storage.colours import instance_colour, tissue_colours
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import read_table, write_slide_tables
from cerberus_batch.tasks.instances import empty_table
from cerberus_batch.tasks.merge import border_shares

CMU_SIZE = (2220, 2967)  # level-0 w, h: a portrait slide
THUMB_W = math.ceil(CMU_SIZE[0] * SIZE / CMU_SIZE[1])
FACTOR = CMU_SIZE[1] / SIZE  # level-0 px per thumbnail px


@pytest.fixture(scope="module")
def cmu_output(tmp_path_factory, cmu_slide) -> Path:
    """Plan, infer every chunk, find instances, finish the border nuclei (in two shares), merge and
    draw, task by task as the Dask run does."""
    output = tmp_path_factory.mktemp("overview")
    slide = SlideEntry(id="cmu", path=cmu_slide)
    model, processing = ModelSpec(kind="stain"), ProcessingSpec(chunk=1008)
    plan = plan_slide_task(slide, model, processing, output)
    for chunk in plan.chunks:
        infer_chunk_task(slide, chunk.index, (chunk.x, chunk.y, chunk.w, chunk.h), chunk.empty_cells, model, processing, output)
    parts = [chunk_instances_task("cmu", c.index, (c.x, c.y, c.w, c.h), output, "0123abcd") for c in plan.chunks]
    shares = border_shares([c.box for c in plan.chunks], 2)
    borders = [border_task("cmu", output, "0123abcd", k, share, [parts[i] for i in share.chunks])
               for k, share in enumerate(shares)]
    overview_task("cmu", output, merge_slide_task("cmu", output, plan.tissue_mm2, "0123abcd", parts, borders))
    return output


def colours_in(pixels: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.unique(pixels.reshape(-1, 3), axis=0).tolist()))


def test_overview_task_writes_overview_of_expected_size(cmu_output):
    path = OutputLayout(cmu_output).overview("cmu")
    assert path == cmu_output / "tables" / "overview" / "cmu.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        # Thumbnail and tissue panel side by side, legend to the right; the legend (5 lines) is shorter.
        assert picture.size == (3 * MARGIN + 2 * THUMB_W + LEGEND_WIDTH, HEADER + SIZE + MARGIN)
    assert not list(path.parent.glob(".*")), "no temporary files left behind"


def test_thumbnail_shows_tissue_and_a_dot_on_every_nucleus(cmu_output):
    pixels = np.asarray(Image.open(OutputLayout(cmu_output).overview("cmu")))
    thumb = pixels[HEADER : HEADER + SIZE, MARGIN : MARGIN + THUMB_W].astype(int)
    assert thumb.std() > 20, "thumbnail panel is blank"
    # H&E: pink/purple tissue (red above green) on a good share of the picture.
    assert ((thumb[..., 0] - thumb[..., 1]) > 30).mean() > 0.2
    nuclei = read_table(cmu_output, "nuclei", ["cmu"])
    assert len(nuclei) > 1000
    assert len(OutputLayout(cmu_output).table_files("nuclei", "cmu")) > 2, "drawn from the chunks' parts and the merge's"
    x = np.floor(nuclei["centroid_x"].to_numpy() / FACTOR).astype(int)
    y = np.floor(nuclei["centroid_y"].to_numpy() / FACTOR).astype(int)
    dot = instance_colour("nuclei", "nucleus")
    assert (thumb[y, x] == dot).all(axis=1).all()


def test_tissue_panel_and_legend_carry_the_class_colours(cmu_output):
    pixels = np.asarray(Image.open(OutputLayout(cmu_output).overview("cmu")))
    group = zarr.open_group(cmu_output / "maps" / "cmu", mode="r")
    cells = group["tissue_class"][:]
    assert set(np.unique(cells)) == {0, 1}
    names = group.attrs["class_names"]["Patch-Class"]
    palette = tissue_colours(names)
    transform = Transform.from_dict(group.attrs["transform"])
    left = 2 * MARGIN + THUMB_W
    checked = 0
    for row, col in zip(*np.nonzero(np.ones_like(cells))):
        cx, cy = transform.to_level0((col + 0.5) * CELL, (row + 0.5) * CELL)
        px, py = int(cx / FACTOR), int(cy / FACTOR)
        if px < THUMB_W and py < SIZE:  # the map's last cells reach past the slide
            assert tuple(pixels[HEADER + py, left + px]) == palette[cells[row, col]]
            checked += 1
    assert checked > 200
    legend = colours_in(pixels[HEADER:, left + THUMB_W + MARGIN :])
    assert set(palette) | {instance_colour("nuclei", "nucleus")} <= legend


def test_gland_outlines_are_drawn_in_their_class_colour(cmu_output):
    # A known surface-epithelium gland: its outline must land on the thumbnail where it lies.
    square = shapely.box(600, 400, 1200, 1000)
    glands = gpd.GeoDataFrame(
        {"slide_id": ["cmu"], "class_name": ["surface-epi"], "centroid_x": [900.0], "centroid_y": [700.0]},
        geometry=[square],
    )
    write_slide_tables(cmu_output, "cmu", {"glands": glands})
    try:
        write_overview(cmu_output, "cmu")
        pixels = np.asarray(Image.open(OutputLayout(cmu_output).overview("cmu")))
    finally:
        write_slide_tables(cmu_output, "cmu", {"glands": empty_table()})
        write_overview(cmu_output, "cmu")
    colour = instance_colour("glands", "surface-epi")
    thumb = pixels[HEADER : HEADER + SIZE, MARGIN : MARGIN + THUMB_W]
    top, bottom = round(400 / FACTOR), round(1000 / FACTOR)
    left, right = round(600 / FACTOR), round(1200 / FACTOR)
    edge = np.r_[thumb[top, left:right], thumb[bottom, left:right], thumb[top:bottom, left], thumb[top:bottom, right]]
    gland, dot = (edge == colour).all(axis=1), (edge == instance_colour("nuclei", "nucleus")).all(axis=1)
    assert (gland | dot).all(), "every outline px is the gland colour unless a nucleus dot lies on top"
    assert gland.mean() > 0.8
    inside = thumb[top + 5 : bottom - 5, left + 5 : right - 5]
    assert not (inside == colour).all(axis=-1).any()
