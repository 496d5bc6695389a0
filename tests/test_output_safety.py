"""Inputs are never touched: an output folder that is, holds or lies inside an input is refused
before anything is written, and no write ever removes a folder we did not write."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.errors import OutputError
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.pipeline.tile import run_tile_mode
from cerberus_batch.storage.atomic import atomic_path

DEMO_SLIDE = Path(__file__).parent.parent / "configs" / "demo" / "slides" / "demo-a.svs"


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with the sha256 of each file's bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


def image_folder(folder: Path) -> Path:
    """D/a.png beside D/a/b.png: the layout whose folder `a` tile mode once deleted."""
    rng = np.random.default_rng(0)
    (folder / "a").mkdir(parents=True)
    for path in (folder / "a.png", folder / "a" / "b.png"):
        Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(path)
    return folder


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_tile_refuses_an_output_that_overlaps_the_input(tmp_path, where):
    images = image_folder(tmp_path / "D" / "images")
    output = {"equal": images, "inside": images / "a" / "out", "containing": tmp_path / "D"}[where]
    before = tree_hashes(tmp_path)
    result = CliRunner().invoke(main, ["tile", "--model-kind", "stain", "--input-dir", str(images), "--output-dir", str(output)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(images) in lines[0] and str(output.resolve()) in lines[0], result.output
    assert tree_hashes(tmp_path) == before  # not a byte added, changed or removed


def test_tile_never_replaces_a_folder_it_did_not_write(tmp_path):
    # The output is apart from the input, but already holds a user's folder named like an image.
    images = image_folder(tmp_path / "images")
    Image.open(images / "a.png").save(images / "c.png")
    output = tmp_path / "out"
    (output / "c").mkdir(parents=True)
    (output / "c" / "precious.txt").write_text("years of work")
    errors = {o.image.name: o.error for o in run_tile_mode(images, output, StainPredictor())}
    assert "was not written by cerberus-batch" in errors["c.png"]
    assert (output / "c" / "precious.txt").read_text() == "years of work"
    # a/b.png's output folder a/b lies inside a.png's: a.png is refused, as a name clash.
    assert f"would hold the output of {images / 'a' / 'b.png'}" in errors["a.png"]
    assert errors["b.png"] is None and (output / "a" / "b" / "nuclei.parquet").is_file()
    # Once the user's folder is gone, the rerun writes `c`, and a third run replaces what we wrote.
    shutil.rmtree(output / "c")
    for _ in range(2):
        errors = {o.image.name: o.error for o in run_tile_mode(images, output, StainPredictor())}
        assert errors["b.png"] is None and errors["c.png"] is None
        assert (output / "c" / "nuclei.parquet").is_file()


def test_atomic_path_refuses_to_replace_an_unknown_folder(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "theirs.txt").write_text("keep")
    with pytest.raises(OutputError, match="was not written by cerberus-batch"):
        with atomic_path(target) as partial:
            partial.mkdir()
            (partial / "ours.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]  # and no partial left behind
    assert (target / "theirs.txt").read_text() == "keep"


@pytest.mark.parametrize("case", ["output is the slides' folder", "output inside the model folder", "output holds the mask"])
def test_run_refuses_an_output_that_overlaps_an_input(tmp_path, case):
    inputs = tmp_path / "inputs"
    (inputs / "model").mkdir(parents=True)
    slide = inputs / "slides" / "a.svs"
    slide.parent.mkdir()
    slide.write_bytes(DEMO_SLIDE.read_bytes())
    mask = inputs / "masks" / "a.png"
    mask.parent.mkdir()
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(mask)
    body = {"name": "safety", "slides": [{"path": str(slide), "id": "a", "mask": str(mask)}], "model": {"kind": "stain"}}
    if case == "output is the slides' folder":
        body["output"], named = str(slide.parent), slide
    elif case == "output inside the model folder":
        # The stain model takes no weights; a Cerberus cohort's model folder is checked the same way.
        (inputs / "model" / "settings.yml").write_text("x")
        (inputs / "model" / "weights.tar").write_bytes(b"x")
        body["model"] = {"kind": "cerberus", "weights": str(inputs / "model")}
        body["output"], named = str(inputs / "model" / "out"), inputs / "model"
    else:
        body["output"], named = str(inputs / "masks"), mask
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text(yaml.safe_dump(body))
    before = tree_hashes(inputs)
    result = CliRunner().invoke(main, ["run", str(cohort), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and "output folder" in lines[0], result.output
    assert tree_hashes(inputs) == before
