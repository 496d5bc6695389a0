"""Cerberus passes on a slide-wide tile grid: glass tiles skipped, tiles shrunk to their tissue, and maps
and tables bit-identical for every chunk that is a multiple of the tile."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.grid import CELL, CONTEXT, Tile, tissue_tiles
from cerberus_batch.model import CerberusPredictor, InferenceOptions
from cerberus_batch.slides import TissueMask, open_slide, plan_chunks, tissue_mask
from cerberus_batch.slides.plan import cell_tissue
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.tables import read_table
from cerberus_batch.storage.zarr_maps import map_arrays
from cerberus_batch.tasks.infer import predict_chunk, stored_maps
from cerberus_batch.vocabulary import DRAWING_ORDER
from helpers import run_ok, write_cohort

TILE = 1008
CHUNKS = (1008, 2016, 3024)
# Cells (rows, cols) of CMU-1-Small-Region kept from its automatic mask: they straddle the corner
# of four 1008-px tiles where tissue meets glass, so every tile is shrunk and two keep glass cells.
WINDOW = (slice(5, 9), slice(4, 10))


def test_tiles_are_shrunk_to_their_tissue_and_glass_tiles_left_out():
    cells = np.zeros((5, 7), bool)  # tile 3 cells: a 2 x 3 grid of tiles, the last row and column clipped
    cells[1, 1] = cells[2, 2] = True  # tile (0, 0): cells (1..2, 1..2)
    cells[0, 6] = True  # tile (0, 2), clipped to one column: that cell alone
    cells[4, 3] = cells[3, 5] = True  # tile (1, 1): rows 3..4, cols 3..5
    assert sorted(tissue_tiles(cells, 3 * CELL)) == sorted([
        Tile(1 * CELL, 1 * CELL, 2 * CELL, 2 * CELL),
        Tile(0, 6 * CELL, CELL, CELL),
        Tile(3 * CELL, 3 * CELL, 2 * CELL, 3 * CELL),
    ])  # tiles (0, 1) and (1, 0) hold glass only
    assert tissue_tiles(np.zeros((4, 4), bool), 2 * CELL) == []


def test_shrunk_tile_is_the_model_on_its_bounding_box(parity_model_dir, cmu_slide):
    """A pass covers the tissue cells' bounding box (with context) and nothing else; glass is 0."""
    view = open_slide(cmu_slide).at_mpp(0.5)
    x, y = 4 * CELL, 5 * CELL
    image = view.read(x - CONTEXT, y - CONTEXT, 3 * CELL + 2 * CONTEXT, 3 * CELL + 2 * CONTEXT)
    tissue = np.zeros((3, 3), bool)
    tissue[0, 1] = tissue[1, 2] = True  # bounding box: row 0..1, col 1..2
    predictor = CerberusPredictor(parity_model_dir, options=InferenceOptions(tile=3 * CELL, device="cpu"))
    got = predictor.predict(image, tissue)
    box = image[: 2 * CELL + 2 * CONTEXT, CELL : 3 * CELL + 2 * CONTEXT]
    expected = predictor.predict(box)
    for key, values in got.items():
        side = 1 if key == "Patch-Class" else CELL
        inside = values[:, : 2 * side, side : 3 * side]
        np.testing.assert_array_equal(inside, expected[key], err_msg=key)
        outside = values.copy()
        outside[:, : 2 * side, side : 3 * side] = 0
        assert not outside.any(), key


@pytest.fixture(scope="module")
def window_mask(cmu_slide, tmp_path_factory) -> tuple[Path, TissueMask]:
    """CMU's automatic mask, kept only where it touches the WINDOW cells, as a given mask file."""
    view = open_slide(cmu_slide).at_mpp(0.5)
    auto = tissue_mask(view, "auto")
    assert auto.downsample == auto.downsample_x and CELL % auto.downsample == 0
    per_cell = int(CELL // auto.downsample)
    kept = np.zeros_like(auto.array)
    rows, cols = (slice(s.start * per_cell, s.stop * per_cell) for s in WINDOW)
    kept[rows, cols] = auto.array[rows, cols]
    path = tmp_path_factory.mktemp("mask") / "window.png"
    Image.fromarray(kept.astype(np.uint8) * 255).save(path)
    mask = tissue_mask(view, path)
    tissue = cell_tissue(mask, view.shape) > 0
    assert tissue[WINDOW].any() and not tissue[WINDOW].all(), "the window holds tissue and glass"
    grown = tuple(slice(w.start - 1, w.stop + 1) for w in WINDOW)  # the given mask's px are ~15.95 px, not 16
    assert tissue.sum() == tissue[grown].sum()
    return path, mask


def slide_maps(view, mask, predictor, chunk: int) -> dict[str, np.ndarray]:
    """Every stored map of the slide, chunk by chunk as a run writes them."""
    plan = plan_chunks(view, mask, chunk=chunk)
    specs = map_specs(predictor.heads, predictor.class_names)
    rows, cols = (math.ceil(n / CELL) * CELL for n in view.shape)
    maps: dict[str, np.ndarray] = {}
    for c in plan.chunks:
        inside = (min(c.h, view.shape[0] - c.y), min(c.w, view.shape[1] - c.x))
        stored = stored_maps(predict_chunk(view.read, predictor, c.box, c.empty_cells), specs, c.empty_cells, inside)
        for spec in specs:
            part = stored[spec.name]
            array = maps.setdefault(spec.name, np.zeros(part.shape[:-2] + (rows // spec.downsample, cols // spec.downsample), part.dtype))
            d = spec.downsample
            array[..., c.y // d : (c.y + c.h) // d, c.x // d : (c.x + c.w) // d] = part
    return maps


@pytest.mark.slow
def test_maps_are_bit_identical_for_every_chunk_multiple_of_the_tile(parity_model_dir, cmu_slide, window_mask):
    view = open_slide(cmu_slide).at_mpp(0.5)
    predictor = CerberusPredictor(parity_model_dir, options=InferenceOptions(tile=TILE, device="cpu"))
    first, *others = (slide_maps(view, window_mask[1], predictor, chunk) for chunk in CHUNKS)
    assert first["nuclei_prob"].any()
    for maps in others:
        assert maps.keys() == first.keys()
        for name, array in first.items():
            np.testing.assert_array_equal(maps[name], array, err_msg=name)


def one_slide_cohort(folder: Path, slide: Path, mask: Path | None, model: dict, **processing) -> Path:
    slides = [{"path": str(slide), "id": "cmu", **({"mask": str(mask)} if mask else {})}]
    return write_cohort(folder, slides, model=model, processing=processing)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_chunk_that_is_not_a_multiple_of_the_tile_is_refused(tmp_path, cmu_slide, parity_model_dir, command):
    cohort = one_slide_cohort(tmp_path, cmu_slide, None, {"kind": "cerberus", "weights": str(parity_model_dir)}, chunk=1440)
    result = CliRunner().invoke(main, [command, str(cohort)])
    assert result.exit_code == 1
    line = cohort.read_text().splitlines().index("  chunk: 1440") + 1
    assert result.output == f"Error: {cohort}:{line}: processing.chunk: 1440 is not a multiple of processing.tile (1008)\n"
    assert not (tmp_path / "out").exists()


def test_validate_prints_input_px_per_tissue_px(tmp_path, cmu_slide, parity_model_dir):
    cohort = one_slide_cohort(tmp_path, cmu_slide, None, {"kind": "cerberus", "weights": str(parity_model_dir)})
    result = CliRunner().invoke(main, ["validate", str(cohort)], env={"COLUMNS": "200"})  # no wrapping in the table
    assert result.exit_code == 0, result.output
    assert "input px / tissue px" in result.output
    # Independently: every 1008-px tile of the slide-wide grid, cut to the bounding box of its tissue cells.
    view = open_slide(cmu_slide).at_mpp(0.5)
    tissue = cell_tissue(tissue_mask(view, "auto"), view.shape) > 0
    side, read = TILE // CELL, 0
    for top in range(0, tissue.shape[0], side):
        for left in range(0, tissue.shape[1], side):
            rows, cols = np.nonzero(tissue[top : top + side, left : left + side])
            if rows.size:
                read += ((np.ptp(rows) + 1) * CELL + 2 * CONTEXT) * ((np.ptp(cols) + 1) * CELL + 2 * CONTEXT)
    ratio = read / (tissue.sum() * CELL**2)
    assert ratio <= 2.5
    header = re.split(r"[│|┃]", next(line for line in result.output.splitlines() if "input px / tissue px" in line))
    row = re.split(r"[│|┃]", next(line for line in result.output.splitlines() if "cmu" in line))
    column = next(i for i, name in enumerate(header) if "input px / tissue px" in name)
    assert f"{ratio:.2f}" in row[column]


@pytest.mark.slow
@pytest.mark.e2e
def test_run_maps_and_tables_are_bit_identical_across_chunk_sizes(tmp_path, cmu_slide, parity_model_dir, window_mask, cluster):
    model = {"kind": "cerberus", "weights": str(parity_model_dir)}
    outputs = [run_ok(one_slide_cohort(tmp_path / str(chunk), cmu_slide, window_mask[0], model, chunk=chunk, tissue_mask="given"), cluster)
               for chunk in CHUNKS]
    groups = [map_arrays(zarr.open_group(out / "maps" / "cmu", mode="r")) for out in outputs]
    names = sorted(groups[0])
    assert "nuclei_prob" in names and "gland_class" in names
    for group in groups[1:]:
        assert sorted(group) == names
        for name in names:
            np.testing.assert_array_equal(group[name][:], groups[0][name][:], err_msg=name)
    for kind in DRAWING_ORDER:
        first = read_table(outputs[0], kind.name)
        if kind.name == "nuclei":
            assert len(first) > 0
        for out in outputs[1:]:
            table = read_table(out, kind.name)
            assert list(table.columns) == list(first.columns), kind.name
            # Rows in one order: which chunk or border task finished an object decides where it is listed.
            order = ["centroid_y", "centroid_x"]
            a, b = (t.sort_values(order).reset_index(drop=True) for t in (first, table))
            assert a.drop(columns="geometry").equals(b.drop(columns="geometry")), kind.name
            assert a.geometry.geom_equals_exact(b.geometry, 0).all(), kind.name
