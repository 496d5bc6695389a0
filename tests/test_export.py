"""`cerberus-batch export --format qupath`: GeoJSON detections matching the instance tables."""

from __future__ import annotations

import json
import shutil

import pytest
import shapely
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.slides import Transform
from cerberus_batch.storage.colours import INSTANCE_COLOURS, KIND_COLOURS
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import read_table, write_slide_tables
from cerberus_batch.tasks.merge import slide_instances
from cerberus_batch.testing.maps import synthetic_maps

SLIDES = ("slide-a", "slide-b")
KIND_OF = {"nuclei": "nucleus", "glands": "gland", "lumens": "lumen"}


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """Two slides' tables from the real post-processing; a fractional transform gives non-integer coordinates."""
    out = tmp_path_factory.mktemp("cohort")
    for seed, slide_id in enumerate(SLIDES):
        tables = slide_instances(synthetic_maps(576, 720, seed=seed), slide_id=slide_id,
                                 transform=Transform(1.996, 1.996, 10.5, 3.25), mpp=0.5)
        write_slide_tables(out, slide_id, tables)
    return out


def export(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def test_features_match_the_tables_row_for_row(output, tmp_path):
    target = tmp_path / "slide-a.geojson"
    result = export(str(output), "--format", "qupath", "--slide", "slide-a", "-o", str(target))
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    assert document["type"] == "FeatureCollection"
    features = document["features"]
    tables = {kind: read_table(output, kind, ["slide-a"]) for kind in KIND_OF}
    assert all(len(table) for table in tables.values()), "the synthetic slide has every kind"
    assert len(features) == sum(len(table) for table in tables.values())
    assert f"{len(features)} detections" in result.output
    by_kind = {kind: [f for f in features if f["properties"]["kind"] == name] for kind, name in KIND_OF.items()}
    for kind, table in tables.items():
        found = by_kind[kind]
        assert len(found) == len(table)
        for feature, row in zip(found, table.itertuples()):
            props = feature["properties"]
            assert feature["type"] == "Feature" and props["objectType"] == "detection"
            assert props["classification"]["name"] == row.class_name
            expected = INSTANCE_COLOURS[kind].get(row.class_name, KIND_COLOURS[kind])
            assert props["classification"]["color"] == list(expected)
            assert props["measurements"]["area_um2"] == row.area_um2
            assert props["measurements"]["class_prob"] == row.class_prob
            geometry = shapely.geometry.shape(feature["geometry"])
            assert geometry.equals_exact(row.geometry, tolerance=0), f"{kind} {row.instance_id}"
        if kind == "glands":
            assert [f["properties"]["measurements"]["lumen_count"] for f in found] == list(table["lumen_count"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no partial file left behind"


def test_several_slides_need_a_slide_id(output, tmp_path):
    target = tmp_path / "all.geojson"
    result = export(str(output), "-o", str(target))
    assert result.exit_code == 1
    assert "one slide per file" in result.output and "--slide" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not target.exists()


def test_a_single_slide_output_needs_no_slide_id(output, tmp_path):
    single = tmp_path / "single"
    for kind in ("nuclei", "glands", "lumens"):
        shutil.copytree(OutputLayout(output).table_folder(kind, "slide-b"), OutputLayout(single).table_folder(kind, "slide-b"))
    target = tmp_path / "b.geojson"
    result = export(str(single), "-o", str(target))
    assert result.exit_code == 0, result.output
    rows = sum(len(read_table(output, kind, ["slide-b"])) for kind in KIND_OF)
    assert len(json.loads(target.read_text())["features"]) == rows


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "csv", "--slide", "slide-a"], "--format 'csv'"),
        (["--slide", "slide-z"], "--slide 'slide-z'"),
    ],
)
def test_bad_requests_are_one_line_errors(output, tmp_path, args, message):
    result = export(str(output), *args, "-o", str(tmp_path / "x.geojson"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_output_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "no-such-run"
    result = export(str(missing), "-o", str(tmp_path / "x.geojson"))
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {missing}: output folder not found"
