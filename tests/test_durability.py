"""Durable writes all the way up: before a ledger marker is written, every folder created on the way
to the data it vouches for, and every folder a file was renamed into, has been fsynced."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from cerberus_batch.storage.atomic import fsync_all, make_dirs
from cerberus_batch.storage.ledger import TABLES_COMMITTED, Ledger
from cerberus_batch.storage.maps import map_specs
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import stage_table_part, write_slide_tables
from cerberus_batch.storage.zarr_maps import create_slide_maps, open_slide_maps, write_chunk


class Recorder:
    """os.mkdir, os.replace and os.fsync as they happen (passed through to the real calls), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.events: list[tuple[str, Path, Path | None]] = []
        self.lock = threading.Lock()  # Zarr writes from a thread pool
        real_mkdir, real_replace, real_fsync = os.mkdir, os.replace, os.fsync

        def mkdir(path, *args, **kwargs):
            real_mkdir(path, *args, **kwargs)
            self.add("mkdir", Path(os.path.abspath(path)))

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            self.add("replace", Path(os.path.abspath(dst)), Path(os.path.abspath(src)))

        def fsync(fd):
            real_fsync(fd)
            self.add("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")))

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "fsync", fsync)

    def add(self, kind: str, path: Path, source: Path | None = None) -> None:
        with self.lock:
            self.events.append((kind, path, source))

    def unsynced_before(self, marker: Path) -> list[str]:
        """What was created or renamed into before `marker` appeared, and not fsynced in between."""
        end = next(i for i, (kind, path, _) in enumerate(self.events) if kind == "replace" and path == marker)
        synced_after = lambda i, path: any(k == "fsync" and p == path for k, p, _ in self.events[i + 1 : end])  # noqa: E731
        problems = []
        for i, (kind, path, source) in enumerate(self.events[:end]):
            if kind == "mkdir":
                problems += [f"new folder {path}"] * (not synced_after(i, path))
                problems += [f"parent of new folder {path}"] * (not synced_after(i, path.parent))
            elif kind == "replace":
                problems += [f"folder renamed into: {path.parent}"] * (not synced_after(i, path.parent))
                if path.is_file() and not synced_after(i, path):
                    # the bytes: synced before the rename, under the name they were written with
                    problems += [f"file {path}"] * (not any(k == "fsync" and p == source for k, p, _ in self.events[:i]))
        # The marker itself is durable too once the ledger call returns.
        after = self.events[end + 1 :]
        problems += [f"folder of the marker {marker.parent}"] * (not any(k == "fsync" and p == marker.parent for k, p, _ in after))
        return problems


def test_a_chunk_write_is_durable_before_its_ledger_marker(tmp_path, monkeypatch):
    specs = map_specs(["Nuclei-INST", "Nuclei-TYPE", "Patch-Class"], {"Patch-Class": ["bg", "tissue"]})
    attrs = {"slide_id": "s", "mpp": 0.5}
    path = tmp_path / "out" / "maps" / "s"
    path.parent.mkdir(parents=True)
    recorder = Recorder(monkeypatch)
    create_slide_maps(path, shape=(576, 576), chunk=288, specs=specs, dtype="uint8", attrs=attrs)
    rng = np.random.default_rng(0)
    stored = {
        "nuclei_prob": rng.integers(1, 255, (2, 288, 288), dtype=np.uint8),
        "nuclei_class": rng.integers(1, 3, (288, 288), dtype=np.uint8),
        "tissue_class": np.ones((2, 2), np.uint8),
        "tissue_prob": rng.integers(1, 255, (2, 2, 2), dtype=np.uint8),
    }
    write_chunk(open_slide_maps(path, writable=True), 288, 288, stored, specs)
    Ledger(tmp_path / "out").mark_done("s", 3)
    marker = tmp_path / "out" / "ledger" / "s" / "chunk-3.done"
    assert (path / "nuclei_prob" / "0" / "c" / "0" / "1" / "1").is_file()  # the chunk folders Zarr made
    assert any(kind == "mkdir" and p == path / "nuclei_prob" / "0" / "c" / "0" / "1" for kind, p, _ in recorder.events)
    assert recorder.unsynced_before(marker) == []


def test_a_table_commit_is_durable_before_its_ledger_marker(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    table = gpd.GeoDataFrame({"instance_id": [1, 2]}, geometry=[box(0, 0, 4, 4), box(10, 10, 12, 13)])
    write_slide_tables(tmp_path / "out", "s", {"nuclei": table.iloc[:1]})  # an earlier run's tables, replaced below
    recorder = Recorder(monkeypatch)
    stage_table_part(tmp_path / "out", "s", "run1", "nuclei", 0, table)  # a chunk task's part
    write_slide_tables(tmp_path / "out", "s", {"nuclei": table, "glands": table.iloc[:0]}, token="run1")
    Ledger(tmp_path / "out").mark_slide("s", TABLES_COMMITTED, {"nuclei": 4})
    marker = tmp_path / "out" / "ledger" / "s" / "instances.json"
    layout = OutputLayout(tmp_path / "out")
    created = [p for kind, p, _ in recorder.events if kind == "mkdir"]
    assert layout.staged_parts("nuclei", "s", "run1") in created
    renamed = [p for kind, p, _ in recorder.events if kind == "replace"]
    assert layout.table_folder("nuclei", "s") in renamed and layout.table_folder("glands", "s") in renamed
    assert layout.replaced_tables("nuclei", "s") in renamed  # the earlier folder, moved aside
    assert recorder.unsynced_before(marker) == []


def _make_same_folders(roots: list[str]) -> int:
    for root in roots:
        make_dirs(Path(root) / "out" / "masks")
    return len(roots)


def test_workers_making_the_same_new_folders_at_once_all_succeed(tmp_path):
    """Slides planned side by side each make OUT/masks, OUT/plans, …: whoever comes second must not fail."""
    roots = [str(tmp_path / f"run{i}") for i in range(300)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sum(pool.map(_make_same_folders, [roots] * 4)) == 4 * len(roots)
    assert all((Path(root) / "out" / "masks").is_dir() for root in roots)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError, match="a-file"):
        make_dirs(tmp_path / "a-file" / "out")
    with pytest.raises(NotADirectoryError, match="a-file"):
        make_dirs(tmp_path / "a-file")


def test_concurrent_flushes_flush_each_path_and_fail_as_one(tmp_path, monkeypatch):
    """fsync_all flushes every path it is given, and a flush that fails fails the call (no ledger marker follows)."""
    recorder = Recorder(monkeypatch)
    files = [tmp_path / f"f{i}" for i in range(40)]
    for file in files:
        file.write_bytes(b"x")
    fsync_all([*files, tmp_path, files[0]])
    assert sorted(p for kind, p, _ in recorder.events if kind == "fsync") == sorted([*files, tmp_path])
    with pytest.raises(FileNotFoundError):
        fsync_all([*files, tmp_path / "gone"])
