"""A slide's tables in part files, committed whole: readers never see a mix of runs, crashes never lose parts.

The first tests build the on-disk states a crash can leave (staged parts of a dead run, a
partition moved aside between a commit's two renames, a commit recorded but not renamed) with the
storage functions themselves; the last kills a real `cerberus-batch run` while it merges a slide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image

from cerberus_batch.storage.layout import MERGE_PART, OutputLayout
from cerberus_batch.storage.ledger import TABLES_COMMITTED, Ledger
from cerberus_batch.storage.tables import (
    class_counts, read_table, recover_slide_tables, stage_table_part, table_batches, write_geoparquet, write_slide_tables,
)
from cerberus_batch.testing.slides import make_synthetic_slide
from helpers import run_ok, write_cohort

KINDS = ("nuclei", "glands", "lumens", "tissue")


def boxes(first_id: int, n: int, name: str = "nucleus") -> gpd.GeoDataFrame:
    """n square objects with consecutive instance ids, as a chunk or the merge would find them."""
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    return gpd.GeoDataFrame(
        {"instance_id": ids, "class_name": [name] * n, "area_px": np.full(n, 16, np.int64)},
        geometry=[shapely.box(i, i, i + 4, i + 4) for i in ids],
    )


def rows(output: Path, kind: str, slide_id: str) -> list[tuple]:
    table = read_table(output, kind, [slide_id])
    return sorted(zip(table["instance_id"], table["class_name"], shapely.to_wkb(table.geometry.values)))


def expected(*tables: gpd.GeoDataFrame) -> list[tuple]:
    both = pd.concat(tables, ignore_index=True)
    return sorted(zip(both["instance_id"], both["class_name"], shapely.to_wkb(both.geometry.values)))


def test_a_slide_of_several_parts_reads_as_one_table_everywhere(tmp_path):
    chunk0, chunk1, merge = boxes(0, 5), boxes(100, 3, "other"), boxes(50, 2)
    stage_table_part(tmp_path, "s1", "run1", "nuclei", 0, chunk0)
    stage_table_part(tmp_path, "s1", "run1", "nuclei", 1, chunk1)
    write_slide_tables(tmp_path, "s1", {"nuclei": merge}, token="run1")
    stage_table_part(tmp_path, "s2", "run1", "nuclei", 0, boxes(0, 4))  # staged, not committed: invisible
    write_slide_tables(tmp_path, "s3", {"nuclei": boxes(7, 1)})
    layout = OutputLayout(tmp_path)
    assert [p.name for p in layout.table_files("nuclei", "s1")] == ["part-0.parquet", "part-1.parquet", f"part-{MERGE_PART}.parquet"]
    assert rows(tmp_path, "nuclei", "s1") == expected(chunk0, chunk1, merge)
    assert set(read_table(tmp_path, "nuclei")["slide_id"]) == {"s1", "s3"}
    counted = duckdb.sql(
        f"SELECT slide_id, count(*) FROM read_parquet('{tmp_path}/tables/nuclei/*/*.parquet', hive_partitioning = true, "
        "hive_types = {'slide_id': VARCHAR}) GROUP BY slide_id ORDER BY slide_id").fetchall()
    assert counted == [("s1", 10), ("s3", 1)]
    assert class_counts(tmp_path, "nuclei", "s1") == {"nucleus": 7, "other": 3}
    batches = table_batches(layout.table_files("nuclei", "s1"), ["instance_id"])
    assert sorted(np.concatenate([b["instance_id"] for b in batches]).tolist()) == [r[0] for r in expected(chunk0, chunk1, merge)]


def test_parts_a_dead_run_staged_are_never_committed(tmp_path):
    stage_table_part(tmp_path, "s", "dead0001", "nuclei", 0, boxes(0, 5))  # a run killed before its merge
    stage_table_part(tmp_path, "s", "run2", "nuclei", 1, boxes(10, 2))
    write_slide_tables(tmp_path, "s", {"nuclei": boxes(20, 1)}, token="run2")
    assert rows(tmp_path, "nuclei", "s") == expected(boxes(10, 2), boxes(20, 1))
    assert not OutputLayout(tmp_path).table_staging("nuclei", "s").exists(), "the commit clears the slide's staging area"

    stage_table_part(tmp_path, "s", "dead0002", "nuclei", 0, boxes(0, 5))
    recover_slide_tables(tmp_path, "s")  # what the next run's plan task does first
    assert not OutputLayout(tmp_path).table_staging("nuclei", "s").exists()
    assert rows(tmp_path, "nuclei", "s") == expected(boxes(10, 2), boxes(20, 1))


def test_a_retried_merge_keeps_the_chunks_parts(tmp_path):
    """Dask reruns a task whose worker died: its commit may have happened, or been recorded only."""
    chunks, merge = boxes(0, 5), boxes(50, 2)
    stage_table_part(tmp_path, "s", "run1", "nuclei", 0, chunks)
    write_slide_tables(tmp_path, "s", {"nuclei": merge}, token="run1")
    # The worker died after the commit; a chunk task rerun for the lost result stages its part again.
    stage_table_part(tmp_path, "s", "run1", "nuclei", 0, chunks)
    write_slide_tables(tmp_path, "s", {"nuclei": merge}, token="run1")
    assert rows(tmp_path, "nuclei", "s") == expected(chunks, merge)

    # The worker died after recording the commit, before renaming: the rerun finishes it.
    layout = OutputLayout(tmp_path)
    stage_table_part(tmp_path, "s", "run2", "nuclei", 0, boxes(0, 6))
    write_geoparquet(boxes(60, 1), layout.staged_part("nuclei", "s", "run2", MERGE_PART))
    Ledger(tmp_path).mark_commit("s", "nuclei", "run2")
    assert rows(tmp_path, "nuclei", "s") == expected(chunks, merge)
    write_slide_tables(tmp_path, "s", {"nuclei": boxes(60, 1)}, token="run2")
    assert rows(tmp_path, "nuclei", "s") == expected(boxes(0, 6), boxes(60, 1))


def test_a_crash_between_a_commits_two_renames_is_undone_by_the_next_run(tmp_path):
    write_slide_tables(tmp_path, "s", {"nuclei": boxes(0, 3)})
    write_slide_tables(tmp_path, "other", {"nuclei": boxes(0, 1)})
    layout = OutputLayout(tmp_path)
    stage_table_part(tmp_path, "s", "run2", "nuclei", 0, boxes(10, 4))
    write_geoparquet(boxes(40, 1), layout.staged_part("nuclei", "s", "run2", MERGE_PART))
    Ledger(tmp_path).mark_commit("s", "nuclei", "run2")
    os.replace(layout.table_folder("nuclei", "s"), layout.replaced_tables("nuclei", "s"))  # the first rename, then the crash
    assert len(read_table(tmp_path, "nuclei", ["s"])) == 0  # neither folder is read
    recover_slide_tables(tmp_path, "s")
    assert rows(tmp_path, "nuclei", "s") == expected(boxes(0, 3))
    assert not layout.table_staging("nuclei", "s").exists()


# --- a real run killed while it merges a slide ------------------------------------------------


def cli_run(cohort: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish(cohort: Path, cluster) -> None:
    """A whole run, in this process on the shared cluster (only the run that is killed needs its own process)."""
    run_ok(cohort, cluster)


def all_tables(output: Path) -> dict[str, pd.DataFrame]:
    """Every kind's table with its rows sorted, geometries as WKB: what two runs must agree on."""
    found = {}
    for kind in KINDS:
        table = read_table(output, kind)
        assert not table.duplicated(["slide_id", "instance_id"]).any(), kind
        frame = pd.DataFrame(table.drop(columns="geometry"))
        frame["geometry"] = shapely.to_wkb(table.geometry.values)
        found[kind] = frame.sort_values(["slide_id", "instance_id"]).reset_index(drop=True)
    return found


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for kind in KINDS:
        pd.testing.assert_frame_equal(a[kind], b[kind], check_exact=True, obj=kind)


def cohort_with_mask(folder: Path, slide: Path, mask: Path) -> Path:
    return write_cohort(folder, [{"path": str(slide), "id": "synthetic", "mask": str(mask)}],
                        processing={"chunk": 432}, cluster={"workers": 1, "dashboard_address": ":0"})


class Reader(threading.Thread):
    """Reads every kind's table of the slide over and over, as a user's notebook would during a run."""

    def __init__(self, output: Path):
        super().__init__(daemon=True)
        self.output, self.seen, self.stop = output, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for kind in KINDS:
                table = read_table(self.output, kind, ["synthetic"])
                self.seen.append((kind, sorted(table["instance_id"].tolist())))
            time.sleep(0.01)  # leave the run the CPU it needs


@pytest.mark.e2e
def test_sigkill_during_a_merge_leaves_whole_tables_and_the_rerun_gives_the_uninterrupted_ones(tmp_path, cluster):
    slide = tmp_path / "inputs" / "synthetic.svs"  # apart from the outputs
    make_synthetic_slide(slide, size=(1600, 1280), seed=1)  # 2 x 2 chunks of 432 px at 0.5 µm/px
    masks = {}
    for name, columns in (("left", slice(0, 90)), ("all", slice(0, 160))):
        mask = np.zeros((128, 160), np.uint8)  # the slide at 1/10 scale
        mask[:, columns] = 255
        masks[name] = tmp_path / "inputs" / f"{name}.png"
        Image.fromarray(mask).save(masks[name])
    finish(cohort_with_mask(tmp_path / "whole", slide, masks["all"]), cluster)  # the uninterrupted run
    uninterrupted = all_tables(tmp_path / "whole" / "out")

    output = tmp_path / "killed" / "out"
    finish(cohort_with_mask(tmp_path / "killed", slide, masks["left"]), cluster)  # a complete first run, another mask
    previous = all_tables(output)
    layout = OutputLayout(output)
    first_nuclei = layout.table_folder("nuclei", "synthetic").stat().st_ino

    def merging() -> bool:
        """The merge task has staged its part of a kind, or committed one (the nuclei folder was renamed in)."""
        if list((output / "tables").glob(f"*/.staging/slide_id=synthetic/*/part-{MERGE_PART}.parquet")):
            return True
        try:
            return layout.table_folder("nuclei", "synthetic").stat().st_ino != first_nuclei
        except FileNotFoundError:  # between the two renames of the commit
            return True

    reader = Reader(output)
    reader.start()
    second = cli_run(cohort_with_mask(tmp_path / "killed", slide, masks["all"]))  # the plan changed: all recomputed
    deadline = time.time() + 240
    while not merging():
        assert second.poll() is None and time.time() < deadline, second.communicate()[0][-3000:]
        time.sleep(0.002)
    os.killpg(second.pid, signal.SIGKILL)  # client, scheduler and workers, in the middle of the merge
    second.wait()
    reader.stop.set()
    reader.join()
    assert Ledger(output).slide_stage("synthetic", TABLES_COMMITTED) is None, "killed before the run recorded the tables"

    # Each kind, read during the run and after the kill, is the previous run's table or the new one, whole.
    either = {kind: {tuple(previous[kind]["instance_id"]), tuple(uninterrupted[kind]["instance_id"])} for kind in KINDS}
    assert previous["nuclei"]["instance_id"].tolist() != uninterrupted["nuclei"]["instance_id"].tolist()
    for kind, ids in reader.seen + [(kind, sorted(read_table(output, kind, ["synthetic"])["instance_id"])) for kind in KINDS]:
        assert tuple(ids) in either[kind] | {()}, kind  # () only in the instant between a commit's two renames
    assert len(reader.seen) > 4

    finish(tmp_path / "killed" / "cohort.yaml", cluster)  # takes over the killed run's lock
    assert_same(all_tables(output), uninterrupted)
    assert not [p for p in (output / "tables").rglob("*") if ".staging" in p.parts and p.is_file()]
