"""QC picture of a real slide, made by the pipeline's own tasks (stain model, no Dask)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import zarr
from PIL import Image

from cerberus_batch.grid import CELL
from cerberus_batch.overview import (
    CAPTION, CROP, HEADER, LEGEND_WIDTH, MARGIN, NOT_COMPUTED, SIZE, legend_sections, write_overview,
)
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry
from cerberus_batch.pipeline.graph import border_task_count
from cerberus_batch.pipeline.work import (
    border_task, chunk_instances_task, infer_chunk_task, merge_slide_task, overview_task, plan_slide_task,
)
from cerberus_batch.slides import Transform
from cerberus_batch.storage.colours import instance_colour, tissue_colours
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.overview import PREVIEW_WIDTH
from cerberus_batch.storage.tables import read_table, write_slide_tables
from cerberus_batch.storage.zarr_maps import map_arrays
from cerberus_batch.tasks.border import border_shares

CMU_SIZE = (2220, 2967)  # level-0 w, h: a portrait slide
THUMB_W = math.ceil(CMU_SIZE[0] * SIZE / CMU_SIZE[1])
FACTOR = CMU_SIZE[1] / SIZE  # level-0 px per thumbnail px
CROPS_TOP = HEADER + SIZE + MARGIN + CAPTION  # the legend is shorter than the thumbnail
MAGENTA = instance_colour("nuclei", "lymphocyte")  # a class the stain model never gives


@pytest.fixture(scope="module")
def cmu_output(tmp_path_factory, cmu_slide) -> Path:
    """Plan, infer every chunk, find instances, finish the border nuclei (in two shares), merge and
    draw, task by task as the Dask run does."""
    output = tmp_path_factory.mktemp("overview")
    slide = SlideEntry(id="cmu", path=cmu_slide)
    model, processing = ModelSpec(kind="stain"), ProcessingSpec(chunk=1008)
    plan, _ = plan_slide_task(slide, model, processing, output)
    for chunk in plan.chunks:
        infer_chunk_task(slide, chunk.index, (chunk.x, chunk.y, chunk.w, chunk.h), chunk.empty_cells, model, processing, output)
    parts = [chunk_instances_task("cmu", c.index, (c.x, c.y, c.w, c.h), output, "0123abcd") for c in plan.chunks]
    shares = border_shares([c.box for c in plan.chunks], max(2, border_task_count(len(plan.chunks))))
    borders = [border_task("cmu", output, "0123abcd", k, share, [parts[i] for i in share.chunks]) for k, share in enumerate(shares)]
    overview_task("cmu", output, merge_slide_task("cmu", output, plan.tissue_mm2, "0123abcd", parts, borders))
    return output


def copy_with(cmu_output: Path, tmp_path: Path, tables: dict[str, gpd.GeoDataFrame], heads: list[str] = ()) -> Path:
    """A copy of the run's output whose slide has these tables instead (and, as if its model had them, these heads too)."""
    output = tmp_path / "out"
    shutil.copytree(cmu_output, output)
    write_slide_tables(output, "cmu", tables)
    group = zarr.open_group(output / "maps" / "cmu", mode="r+")
    group.attrs["heads"] = [*group.attrs["heads"], *heads]
    write_overview(output, "cmu")
    return output


def circle(cx: float, cy: float, r: float) -> shapely.Polygon:
    return shapely.Point(cx, cy).buffer(r, quad_segs=16)


def table(kind_class: str, shapes: list[shapely.Polygon]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"slide_id": ["cmu"] * len(shapes), "class_name": [kind_class] * len(shapes),
         "centroid_x": [s.centroid.x for s in shapes], "centroid_y": [s.centroid.y for s in shapes]},
        geometry=shapes,
    )


def picture(output: Path) -> np.ndarray:
    return np.asarray(Image.open(OutputLayout(output).overview("cmu"))).astype(int)


def colour_near(pixels: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """For each (x, y) point, whether `colour` lies in the 3 × 3 px around it."""
    hits = []
    for x, y in np.floor(points).astype(int):
        hits.append((pixels[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] == colour).all(axis=-1).any())
    return np.array(hits)


def colours_in(pixels: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.unique(pixels.reshape(-1, 3), axis=0).tolist()))


def test_overview_task_writes_picture_of_expected_size(cmu_output):
    path = OutputLayout(cmu_output).overview("cmu")
    assert path == cmu_output / "tables" / "overview" / "cmu.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        # Thumbnail, tissue panel and legend side by side; the two full-resolution crops below.
        assert png.size == (3 * MARGIN + 2 * THUMB_W + LEGEND_WIDTH, CROPS_TOP + CROP + MARGIN)
    with Image.open(OutputLayout(cmu_output).overview_preview("cmu")) as preview:  # what the cohort report embeds
        assert preview.format == "JPEG" and preview.width == PREVIEW_WIDTH
        assert abs(preview.height / preview.width - png.height / png.width) < 0.01
    assert not list(path.parent.glob(".*")), "no temporary files left behind"


def test_thumbnail_outlines_every_nucleus(cmu_output):
    pixels = picture(cmu_output)
    thumb = pixels[HEADER : HEADER + SIZE, MARGIN : MARGIN + THUMB_W]
    assert thumb.std() > 20, "thumbnail panel is blank"
    # H&E: pink/purple tissue (red above green) on a good share of the picture.
    assert ((thumb[..., 0] - thumb[..., 1]) > 30).mean() > 0.2
    nuclei = read_table(cmu_output, "nuclei", ["cmu"])
    assert len(nuclei) > 1000
    colour = instance_colour("nuclei", "nucleus")
    # Each nucleus's outline passes next to the vertices of its polygon, scaled to the thumbnail.
    sample = nuclei.sample(300, random_state=0)
    near = [colour_near(thumb, shapely.get_coordinates(g.exterior)[::4] / FACTOR, colour).all() for g in sample.geometry]
    assert np.mean(near) > 0.95


def test_crops_show_known_nuclei_as_outlines_at_full_resolution(cmu_output, tmp_path):
    # Twelve nuclei packed into one CROP square, one stray elsewhere: that square is the densest crop.
    cluster = [circle(1100 + 100 * (i % 4), 1600 + 120 * (i // 4), 20) for i in range(12)]
    output = copy_with(cmu_output, tmp_path, {"nuclei": table("lymphocyte", [*cluster, circle(300, 300, 20)])})
    pixels = picture(output)
    crop = pixels[CROPS_TOP : CROPS_TOP + CROP, MARGIN : MARGIN + CROP]
    origin = np.array([2 * CROP, 3 * CROP])  # the CROP grid's square at column 2, row 3
    for nucleus in cluster:
        ring = shapely.get_coordinates(nucleus.exterior) - origin
        assert colour_near(crop, ring, MAGENTA).all(), "the outline runs along the nucleus boundary"
        cx, cy = np.array(nucleus.centroid.coords[0]) - origin
        inside = crop[int(cy) - 10 : int(cy) + 10, int(cx) - 10 : int(cx) + 10]
        assert not (inside == MAGENTA).all(axis=-1).any(), "outlines, not filled discs"
    # The stray nucleus is outlined in the thumbnail, where the crop does not reach.
    thumb = pixels[HEADER : HEADER + SIZE, MARGIN : MARGIN + THUMB_W]
    assert colour_near(thumb, shapely.get_coordinates(circle(300, 300, 20).exterior) / FACTOR, MAGENTA).mean() > 0.9
    # The second crop is of tissue: H&E pink, not glass.
    tissue = pixels[CROPS_TOP : CROPS_TOP + CROP, 2 * MARGIN + CROP : 2 * (MARGIN + CROP)]
    assert ((tissue[..., 0] - tissue[..., 1]) > 30).mean() > 0.3


def test_tissue_panel_and_legend_carry_the_class_colours(cmu_output):
    pixels = picture(cmu_output)
    group = zarr.open_group(cmu_output / "maps" / "cmu", mode="r")
    cells = map_arrays(group)["tissue_class"][:]
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
    legend = colours_in(pixels[HEADER : HEADER + SIZE, left + THUMB_W + MARGIN :])
    assert set(palette) | {instance_colour("nuclei", "nucleus")} <= legend


def test_heads_not_run_say_not_computed_with_counts_for_the_rest(cmu_output):
    attrs = dict(zarr.open_group(cmu_output / "maps" / "cmu", mode="r").attrs)
    assert "Gland-INST" not in attrs["heads"]  # the stain model finds no glands or lumens
    count = len(read_table(cmu_output, "nuclei", ["cmu"]))
    sections = dict(legend_sections(attrs, {"nuclei": {"nucleus": count}}))
    assert sections["Glands"] == [(f"{NOT_COMPUTED} (no Gland-INST head)", None)]
    assert sections["Lumens"] == [(f"{NOT_COMPUTED} (no Lumen-INST head)", None)]
    assert sections["Nuclei"] == [(f"nucleus  {count:,}", instance_colour("nuclei", "nucleus"))]
    assert [name for name, _ in sections["Tissue"]] == attrs["class_names"]["Patch-Class"]


def test_gland_outlines_are_drawn_in_their_class_colour(cmu_output, tmp_path):
    # A known surface-epithelium gland, as if the model had a gland head: its outline must land on the
    # thumbnail where it lies.
    square = shapely.box(600, 400, 1200, 1000)
    output = copy_with(cmu_output, tmp_path, {"glands": table("surface-epi", [square])}, heads=["Gland-INST", "Gland-TYPE"])
    pixels = picture(output)
    colour = instance_colour("glands", "surface-epi")
    thumb = pixels[HEADER : HEADER + SIZE, MARGIN : MARGIN + THUMB_W]
    top, bottom = round(400 / FACTOR), round(1000 / FACTOR)
    left, right = round(600 / FACTOR), round(1200 / FACTOR)
    edge = np.r_[thumb[top, left:right], thumb[bottom, left:right], thumb[top:bottom, left], thumb[top:bottom, right]]
    gland, nucleus = (edge == colour).all(axis=1), (edge == instance_colour("nuclei", "nucleus")).all(axis=1)
    assert (gland | nucleus).all(), "every outline px is the gland colour unless a nucleus outline lies on top"
    assert gland.mean() > 0.8
    inside = thumb[top + 5 : bottom - 5, left + 5 : right - 5]
    assert not (inside == colour).all(axis=-1).any()
