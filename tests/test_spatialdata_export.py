"""`cerberus-batch export --format spatialdata`: stores that spatialdata itself loads, checked against the run's
own tables and maps.

Our writer does not use spatialdata (it pins older dask), so the stores are read back by spatialdata 0.7.3 in a
venv of its own (made once under the tests' cache folder), by tests/spatialdata_readback.py, which prints
what it read as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
import yaml
from click.testing import CliRunner
from conftest import CACHE

from cerberus_batch.cli import main
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.tables import read_table
from cerberus_batch.storage.zarr_maps import open_slide_maps

pytestmark = pytest.mark.e2e  # every test here runs a cohort

SPATIALDATA = "spatialdata==0.7.3"
READBACK = Path(__file__).with_name("spatialdata_readback.py")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def spatialdata_python() -> Path:
    """A Python with spatialdata, in a venv of its own (made once; a finished install leaves its mark)."""
    venv = CACHE / SPATIALDATA.replace("==", "-")
    python, done = venv / "bin" / "python", venv / "installed"
    if not done.is_file():
        steps = ([sys.executable, "-m", "venv", "--clear", str(venv)], [str(python), "-m", "pip", "install", "--quiet", SPATIALDATA])
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode:
                pytest.skip(f"could not install {SPATIALDATA} into {venv}: {result.stderr.strip()[-500:]}")
        done.write_text(SPATIALDATA)
    return python


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory) -> Path:
    """The demo cohort (configs/demo.yaml: the stain model, nuclei and tissue heads) run into a fresh folder."""
    folder = tmp_path_factory.mktemp("demo")
    cohort = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cohort["output"] = str(folder / "out")
    cohort["slides"] = {"glob": str(CONFIGS / "demo" / "slides" / "*.svs")}
    (folder / "demo.yaml").write_text(yaml.safe_dump(cohort))
    assert run_cohort(load_cohort(folder / "demo.yaml"), show_progress=False).status == "ok"
    return folder / "out"


def read_back(python: Path, store: Path) -> dict:
    result = subprocess.run([str(python), str(READBACK), str(store)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_spatialdata_reads_the_export_of_each_demo_slide(demo_output, spatialdata_python, tmp_path) -> None:
    exported = CliRunner().invoke(main, ["export", str(demo_output), "--format", "spatialdata", "--all", "-o", str(tmp_path)])
    assert exported.exit_code == 0, exported.output
    slides = sorted(p.stem for p in tmp_path.glob("*.zarr"))
    assert slides == ["demo-a", "demo-b"]
    for slide in slides:
        facts = read_back(spatialdata_python, tmp_path / f"{slide}.zarr")
        nuclei, tissue = read_table(demo_output, "nuclei", [slide]), read_table(demo_output, "tissue", [slide])
        maps = open_slide_maps(demo_output / "maps" / slide)

        # Every map, each level a scale; the objects of the kinds the model found; one table row per nucleus.
        assert facts["images"] == ["nuclei_prob", "tissue_prob"] and facts["labels"] == ["nuclei_class", "tissue_class"]
        for name, scales in {**facts["image_scales"], **facts["label_scales"]}.items():
            levels = maps[name].attrs["ome"]["multiscales"][0]["datasets"]
            assert scales == [list(maps[f"{name}/{d['path']}"].shape) for d in levels]
        assert len(facts["image_scales"]["nuclei_prob"]) > 1
        assert facts["channels"]["tissue_prob"] == list(maps.attrs["class_names"]["Patch-Class"])
        assert facts["shapes"] == {"nuclei": len(nuclei), "tissue": len(tissue)} and len(nuclei) > 500
        assert facts["tables"] == ["table"] and facts["table_rows"] == len(nuclei)
        assert facts["table_attrs"] == {"region": "nuclei", "region_key": "region", "instance_key": "instance_id"}
        assert facts["joined_rows"] == facts["joined_shapes"] == len(nuclei)  # every row linked to its own shape
        assert facts["shapes_index_unique"] and facts["coordinate_systems"] == ["global"]
        assert {"class_name", "tissue_name", "tissue_class", "area_um2", "centroid_x", "centroid_y"} <= set(facts["obs_columns"])

        # Each checked row is its nucleus; its centroid, taken to the nuclei map by the store's own transformation,
        # falls on one of the nucleus's own pixels: a map px whose centre (level-0 px by the maps' transform, as
        # the README states it) lies inside the nucleus's polygon; and the image holds the map's values there.
        checked = facts["checked"]
        rows = nuclei.set_index("instance_id").loc[checked["instance_id"]]
        assert checked["class_name"] == rows["class_name"].astype(str).tolist()
        assert checked["tissue_name"] == [None if v is None or v != v else v for v in rows["tissue_name"]]
        assert np.allclose(checked["spatial"], rows[["centroid_x", "centroid_y"]].to_numpy())
        t = maps.attrs["transform"]
        px = np.asarray(checked["px"])
        expected = np.column_stack([(rows["centroid_x"] - t["offset_x"]) / t["scale_x"], (rows["centroid_y"] - t["offset_y"]) / t["scale_y"]])
        assert np.all(np.abs(px + 0.5 - expected) <= 0.5 + 1e-6)  # the px holding it (either one, on a px edge)
        centres = np.column_stack([(px[:, 0] + 0.5) * t["scale_x"] + t["offset_x"], (px[:, 1] + 0.5) * t["scale_y"] + t["offset_y"]])
        inside_own = shapely.contains_xy(rows.geometry.to_numpy(), centres[:, 0], centres[:, 1])
        centroid_inside = shapely.contains_xy(rows.geometry.to_numpy(), rows["centroid_x"], rows["centroid_y"])
        assert centroid_inside.mean() > 0.9  # a concave nucleus's centroid may lie outside it: then no own px holds it
        assert inside_own[centroid_inside].all()
        stored = np.asarray(maps["nuclei_prob/0"][:])
        assert np.array_equal(np.asarray(checked["values"]), stored[:, px[:, 1], px[:, 0]].T)


def test_export_of_one_slide_replaces_its_store_and_refuses_other_folders(demo_output, tmp_path) -> None:
    store = tmp_path / "one.zarr"
    for _ in range(2):  # the second export replaces the first store whole
        done = CliRunner().invoke(main, ["export", str(demo_output), "--format", "spatialdata", "--slide", "demo-b", "-o", str(store)])
        assert done.exit_code == 0, done.output
    assert json.loads((store / "zarr.json").read_text())["attributes"]["slide_id"] == "demo-b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr"]  # nothing left beside it
    theirs = tmp_path / "theirs"
    (theirs / "keep.txt").parent.mkdir()
    (theirs / "keep.txt").write_text("a user's file")
    refused = CliRunner().invoke(main, ["export", str(demo_output), "--format", "spatialdata", "--slide", "demo-b", "-o", str(theirs)])
    assert refused.exit_code != 0 and "not written by cerberus-batch" in refused.output
    assert (theirs / "keep.txt").read_text() == "a user's file"


def test_null_tissue_columns_stay_null_in_the_table(demo_output, spatialdata_python, tmp_path) -> None:
    """Where the tissue head did not run, a nucleus's tissue columns are null: in the table too, never 0. Here one
    part file of a copy of the demo output has them null in every third row, another in all rows (typed null)."""
    out = tmp_path / "out"
    shutil.copytree(demo_output, out)
    parts = sorted((out / "tables" / "nuclei" / "slide_id=demo-a").glob("*.parquet"))
    for number, part in enumerate(parts[:2]):
        table = pq.read_table(part)
        n = table.num_rows
        gone = pa.array([number == 1 or row % 3 == 0 for row in range(n)])
        for name in ("tissue_class", "tissue_name"):
            typed_null = number == 1 and name == "tissue_name"  # as a part whose text column is all null reads
            column = pa.nulls(n) if typed_null else pc.if_else(gone, pa.nulls(n, table[name].type), table[name])
            table = table.set_column(table.schema.get_field_index(name), name, column)
        pq.write_table(table, part)
    store = tmp_path / "demo-a.zarr"
    done = CliRunner().invoke(main, ["export", str(out), "--format", "spatialdata", "--slide", "demo-a", "-o", str(store)])
    assert done.exit_code == 0, done.output
    facts = read_back(spatialdata_python, store)
    nuclei = read_table(out, "nuclei", ["demo-a"]).set_index("instance_id").loc[facts["checked"]["instance_id"]]
    assert facts["obs_dtypes"]["tissue_class"] == "Int32" and facts["obs_dtypes"]["tissue_name"] == "category"
    expected = [None if v is None or v != v else v for v in nuclei["tissue_name"]]
    assert None in expected and any(expected) and facts["checked"]["tissue_name"] == expected
