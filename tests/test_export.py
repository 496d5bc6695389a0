"""`cerberus-batch export --format qupath`: GeoJSON objects matching the tables, nuclei as detections, the rest annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import shapely
import yaml
from click.testing import CliRunner
from geojson_pydantic import FeatureCollection

from cerberus_batch.cli import main
from cerberus_batch.model.stain import StainPredictor
from cerberus_batch.slides import Transform
from cerberus_batch.storage.colours import INSTANCE_COLOURS, KIND_COLOURS, TISSUE_COLOURS, tissue_colours
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import read_table, write_slide_tables
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.testing.maps import synthetic_maps
from cerberus_batch.testing.slides import make_synthetic_slide

SLIDES = ("slide-a", "slide-b")
# Table → (the feature's kind, what QuPath imports it as), in the file's order: biggest objects first.
EXPORTED = {
    "tissue": ("tissue region", "annotation"),
    "glands": ("gland", "annotation"),
    "lumens": ("lumen", "annotation"),
    "nuclei": ("nucleus", "detection"),
}


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """Two slides' tables from the real post-processing; a fractional transform gives non-integer coordinates."""
    out = tmp_path_factory.mktemp("cohort")
    for seed, slide_id in enumerate(SLIDES):
        geometry = SlideGeometry(slide_id, Transform(1.996, 1.996, 10.5, 3.25), 0.5)
        tables = slide_instances(synthetic_maps(576, 720, seed=seed), geometry, SlideKinds.for_model())
        write_slide_tables(out, slide_id, tables)
    return out


def export(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def qupath_features(path: Path) -> list[dict]:
    """The file's features, once it is a valid GeoJSON FeatureCollection and each feature has QuPath's fields."""
    text = path.read_text()
    FeatureCollection.model_validate_json(text)
    features = json.loads(text)["features"]
    for feature in features:
        props = feature["properties"]
        assert props["objectType"] in ("detection", "annotation")
        assert isinstance(props["classification"]["name"], str) and props["classification"]["name"]
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(type(c) is int and 0 <= c <= 255 for c in colour), colour
    return features


def by_kind(features: list[dict]) -> dict[str, list[dict]]:
    return {table: [f for f in features if f["properties"]["kind"] == one] for table, (one, _) in EXPORTED.items()}


def test_features_match_the_tables_row_for_row(output, tmp_path):
    target = tmp_path / "slide-a.geojson"
    result = export(str(output), "--format", "qupath", "--slide", "slide-a", "-o", str(target))
    assert result.exit_code == 0, result.output
    features = qupath_features(target)
    tables = {kind: read_table(output, kind, ["slide-a"]) for kind in EXPORTED}
    assert all(len(table) for table in tables.values()), "the synthetic slide has every kind"
    assert len(features) == sum(len(table) for table in tables.values())
    assert [f["properties"]["kind"] for f in features] == [one for kind, (one, _) in EXPORTED.items() for _row in range(len(tables[kind]))]
    assert ", ".join(f"{len(table)} {kind}" for kind, table in tables.items()) in result.output
    for kind, found in by_kind(features).items():
        table = tables[kind]
        assert len(found) == len(table)
        for feature, row in zip(found, table.itertuples()):
            props = feature["properties"]
            assert props["objectType"] == EXPORTED[kind][1]
            assert props["classification"]["name"] == row.class_name
            colour = TISSUE_COLOURS[row.class_name] if kind == "tissue" else INSTANCE_COLOURS[kind].get(row.class_name, KIND_COLOURS[kind])
            assert props["classification"]["color"] == list(colour)
            assert props["measurements"]["area_um2"] == row.area_um2
            assert props["measurements"]["area_px"] == row.area_px
            assert props["measurements"]["class_prob"] == row.class_prob
            assert props["measurements"]["tissue_class"] == int(row.tissue_class) and props["tissue"] == row.tissue_name
            geometry = shapely.geometry.shape(feature["geometry"])
            assert geometry.equals_exact(row.geometry, tolerance=0), f"{kind} {row.instance_id}"
        counted = [f["properties"]["measurements"].get("lumen_count") for f in found]
        assert counted == (list(table["lumen_count"]) if kind == "glands" else [None] * len(found))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no partial file left behind"


def test_all_writes_one_file_per_slide(output, tmp_path):
    folder = tmp_path / "qupath"  # made by the export
    result = export(str(output), "--all", "-o", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [f"{slide}.geojson" for slide in SLIDES]
    for slide in SLIDES:
        found = by_kind(qupath_features(folder / f"{slide}.geojson"))
        assert {kind: len(f) for kind, f in found.items()} == {kind: len(read_table(output, kind, [slide])) for kind in EXPORTED}
        assert f"{folder / slide}.geojson: slide {slide}: " in result.output


def test_several_slides_need_a_slide_id(output, tmp_path):
    target = tmp_path / "all.geojson"
    result = export(str(output), "-o", str(target))
    assert result.exit_code == 1
    assert "one slide per file" in result.output and "--slide" in result.output and "--all" in result.output
    assert f"{output} holds 2 slides" in result.output and str(target) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not target.exists()


def test_a_single_slide_output_needs_no_slide_id(output, tmp_path):
    single = tmp_path / "single"
    for kind in EXPORTED:
        shutil.copytree(OutputLayout(output).table_folder(kind, "slide-b"), OutputLayout(single).table_folder(kind, "slide-b"))
    target = tmp_path / "b.geojson"
    result = export(str(single), "-o", str(target))
    assert result.exit_code == 0, result.output
    rows = sum(len(read_table(output, kind, ["slide-b"])) for kind in EXPORTED)
    assert len(qupath_features(target)) == rows


@pytest.mark.e2e
def test_stain_model_run_exports_nuclei_and_tissue_regions(tmp_path):
    """A real run of the weight-free model: its own class names, no glands or lumens."""
    for index, slide in enumerate(SLIDES):
        make_synthetic_slide(tmp_path / "slides" / f"{slide}.svs", size=(800, 640), seed=index + 1)
    body = {"name": "export", "output": "out", "slides": {"glob": "slides/*.svs"}, "model": {"kind": "stain"},
            "processing": {"chunk": 432}, "cluster": {"workers": 1, "dashboard_address": ":0"}}
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(body))
    assert CliRunner().invoke(main, ["run", str(tmp_path / "cohort.yaml"), "--no-progress"]).exit_code == 0
    result = export(str(tmp_path / "out"), "--all", "-o", str(tmp_path / "qupath"))
    assert result.exit_code == 0, result.output
    tissue_names = StainPredictor.class_names["Patch-Class"]
    for slide in SLIDES:
        found = by_kind(qupath_features(tmp_path / "qupath" / f"{slide}.geojson"))
        assert not found["glands"] and not found["lumens"]
        tables = {kind: read_table(tmp_path / "out", kind, [slide]) for kind in ("nuclei", "tissue")}
        for kind, table in tables.items():
            assert len(found[kind]) == len(table) > 0
            assert {f["properties"]["objectType"] for f in found[kind]} == {EXPORTED[kind][1]}
        assert {tuple(f["properties"]["classification"]["color"]) for f in found["tissue"]} == {tissue_colours(tissue_names)[1]}
        assert {tuple(f["properties"]["classification"]["color"]) for f in found["nuclei"]} == {KIND_COLOURS["nuclei"]}
        region, row = found["tissue"][0]["properties"]["measurements"], tables["tissue"].iloc[0]
        assert (region["area_um2"], region["area_px"]) == (row.area_um2, row.area_px)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "csv", "--slide", "slide-a"], "--format 'csv'"),
        (["--slide", "slide-z"], "--slide 'slide-z'"),
        (["--all", "--slide", "slide-a"], "--slide 'slide-a' with --all"),
    ],
)
def test_bad_requests_are_one_line_errors(output, tmp_path, args, message):
    result = export(str(output), *args, "-o", str(tmp_path / "x.geojson"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_all_needs_a_folder_and_one_slide_a_file(output, tmp_path):
    file = tmp_path / "x.geojson"
    file.write_text("")
    refused = {"--all": export(str(output), "--all", "-o", str(file)), "one": export(str(output), "--slide", "slide-a", "-o", str(tmp_path))}
    assert refused["--all"].output.strip() == f"Error: -o {file}: not a folder; --all writes one file per slide into a folder"
    assert refused["one"].output.startswith(f"Error: -o {tmp_path}: a folder")
    assert all(r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 for r in refused.values())
    assert file.read_text() == ""


def test_missing_output_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "no-such-run"
    result = export(str(missing), "-o", str(tmp_path / "x.geojson"))
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {missing}: output folder not found"
