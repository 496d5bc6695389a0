"""GeoParquet instance tables: metadata, validity, partition and bbox reads, DuckDB, atomic writes."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
import shapely

from cerberus_batch.slides import Transform
from cerberus_batch.storage.atomic import MARKER
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import read_table, write_slide_tables
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.whole import slide_instances
from cerberus_batch.testing.maps import synthetic_maps

SLIDES = ("slide-a", "slide-b")
KINDS = ("nuclei", "glands", "lumens", "tissue")


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    for seed, slide_id in enumerate(SLIDES):
        geometry = SlideGeometry(slide_id, Transform(2.0, 2.0), 0.5)
        tables = slide_instances(synthetic_maps(576, 720, seed=seed), geometry, SlideKinds.for_model())
        write_slide_tables(out, slide_id, tables)
    return out


def test_files_are_geoparquet_1_1_with_bbox_covering(output) -> None:
    for kind in KINDS:
        [part] = OutputLayout(output).table_files(kind, "slide-a")
        meta = json.loads(pq.read_schema(part).metadata[b"geo"])
        assert meta["version"] == "1.1.0"
        column = meta["columns"][meta["primary_column"]]
        assert column["encoding"] == "WKB"
        assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def test_columns_and_valid_geometries(output) -> None:
    nuclei = read_table(output, "nuclei")
    assert {"slide_id", "instance_id", "class_id", "class_name", "class_prob", "area_px", "area_um2",
            "centroid_x", "centroid_y", "geometry"} <= set(nuclei.columns)
    assert "lumen_count" in read_table(output, "glands").columns
    for kind in KINDS:
        table = read_table(output, kind)
        assert len(table) > 0 and table.geometry.is_valid.all() and set(table["slide_id"]) == set(SLIDES)


def test_slide_and_bbox_filters(output) -> None:
    everything = read_table(output, "nuclei")
    one = read_table(output, "nuclei", slide_ids=["slide-b"])
    assert set(one["slide_id"]) == {"slide-b"} and len(one) == (everything["slide_id"] == "slide-b").sum()
    box = (100.0, 200.0, 500.0, 600.0)
    inside = read_table(output, "nuclei", slide_ids=["slide-b"], bbox=box)
    bounds = one.geometry.bounds
    expected = one[(bounds["minx"] <= box[2]) & (bounds["maxx"] >= box[0])
                   & (bounds["miny"] <= box[3]) & (bounds["maxy"] >= box[1])]
    assert 0 < len(inside) < len(one)
    assert sorted(inside["instance_id"]) == sorted(expected["instance_id"])


def test_duckdb_reads_the_hive_partitions(output) -> None:
    rows = duckdb.sql(
        f"SELECT slide_id, count(*) AS n, sum(area_px) AS a FROM read_parquet('{output}/tables/glands/*/*.parquet', "
        "hive_partitioning = true) GROUP BY slide_id ORDER BY slide_id"
    ).fetchall()
    glands = read_table(output, "glands")
    assert [r[0] for r in rows] == list(SLIDES)
    assert [r[1] for r in rows] == [int((glands["slide_id"] == s).sum()) for s in SLIDES]
    query = f"SELECT geometry FROM read_parquet('{output}/tables/tissue/*/*.parquet') LIMIT 1"
    wkb = duckdb.sql(query).fetchall()[0][0]
    assert shapely.from_wkb(bytes(wkb)).is_valid


def test_rewrite_is_atomic_and_leaves_no_temp_files(output) -> None:
    before = read_table(output, "lumens", slide_ids=["slide-a"])
    write_slide_tables(output, "slide-a", {"lumens": before.iloc[:1]})
    assert len(read_table(output, "lumens", slide_ids=["slide-a"])) == 1
    layout = OutputLayout(output)
    committed = {path for kind in KINDS for slide_id in SLIDES for path in layout.table_files(kind, slide_id)}
    leftovers = [p for p in (output / "tables").rglob("*") if p.is_file() and p not in committed and p.name != MARKER]
    assert leftovers == []
    write_slide_tables(output, "slide-a", {"lumens": before})


def test_bad_slide_id_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="slide_id"):
        write_slide_tables(tmp_path, "../x", {})


def test_numeric_looking_slide_ids_stay_text(tmp_path) -> None:
    geometry = SlideGeometry("001", Transform(2.0, 2.0), 0.5)
    tables = slide_instances(synthetic_maps(576, 720, seed=0), geometry, SlideKinds.for_model())
    for slide_id in ("001", "002"):
        write_slide_tables(tmp_path, slide_id, tables)
    nuclei = read_table(tmp_path, "nuclei", slide_ids=["001"])
    assert set(nuclei["slide_id"]) == {"001"} and len(nuclei) == len(tables["nuclei"])
