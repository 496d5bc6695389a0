"""Whole map chunks read past Zarr (`zarr_maps.read_chunk`, `ChunkCache`) hold exactly what Zarr reads there,
and chunks written past it (`zarr_maps.write_chunk_file`) are the very files Zarr writes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import zarr

from cerberus_batch.storage import zarr_maps
from cerberus_batch.storage.zarr_maps import (
    ChunkCache, create_slide_maps, map_arrays, open_slide_maps, read_chunk, write_chunk_file,
)
from cerberus_batch.vocabulary import StoredMap
from helpers import run_ok, write_cohort

SPECS = [StoredMap("prob", 3, "prob", 1), StoredMap("classes", None, "class", 2)]


def chunk_indices(array: zarr.Array) -> list[tuple[int, ...]]:
    return list(itertools.product(*[range(-(-n // c)) for n, c in zip(array.shape, array.chunks)]))


def assert_reads_as_zarr(array: zarr.Array) -> None:
    """Every chunk, and windows across chunk borders, read as Zarr's own slicing reads them."""
    cache, rng = ChunkCache(array, kept=2), np.random.default_rng(0)
    for index in chunk_indices(array):
        window = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks))
        expected = array[window]
        cache[tuple(slice(w.start, w.start + 1) for w in window)]  # the chunk kept, then read whole
        for got in read_chunk(array, index), cache[window]:
            assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.c_contiguous
            np.testing.assert_array_equal(got, expected)
            got += 1  # the caller's own copy: what it does to it changes no later read
    windows = []
    for _ in range(20):
        starts = [int(rng.integers(0, n)) for n in array.shape]
        window = tuple(slice(s, int(rng.integers(s, n + 1))) for s, n in zip(starts, array.shape))
        np.testing.assert_array_equal(cache[window], array[window])
        windows.append(window)
    for window, got in zip(windows, ChunkCache(array).windows(windows), strict=True):  # all at once
        np.testing.assert_array_equal(got, array[window])


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_chunks_of_random_maps_read_as_zarr_reads_them(tmp_path: Path, dtype: str) -> None:
    # 1000 x 700 px in 432 px chunks: edge chunks smaller than the chunk shape, on both axes
    group = create_slide_maps(tmp_path / "maps", shape=(1000, 700), chunk=432, specs=SPECS, dtype=dtype, attrs={"mpp": 0.5})
    arrays = map_arrays(group)
    rng = np.random.default_rng(1)
    prob, classes = arrays["prob"], arrays["classes"]
    prob[...] = rng.integers(0, 256, prob.shape).astype(dtype) if dtype == "uint8" else rng.random(prob.shape).astype(dtype)
    classes[...] = rng.integers(0, 7, classes.shape).astype(classes.dtype)
    prob[:, 432:864, :432] = 0  # all zero: Zarr stores no file, so it reads as the fill value
    classes[:216, 216:] = 0
    for array, missing in ((prob, "c/0/1/0"), (classes, "c/0/1")):
        assert not (Path(array.store.root) / array.path / missing).exists()
        assert_reads_as_zarr(open_slide_maps(tmp_path / "maps")[array.path])


def test_windows_read_at_once_decode_each_chunk_they_touch_once(tmp_path: Path, monkeypatch) -> None:
    group = create_slide_maps(tmp_path / "maps", shape=(1000, 700), chunk=432, specs=SPECS, dtype="uint8", attrs={"mpp": 0.5})
    prob = map_arrays(group)["prob"]
    prob[...] = np.random.default_rng(2).integers(1, 256, prob.shape).astype(np.uint8)
    decoded = []
    monkeypatch.setattr(zarr_maps, "read_chunk", lambda array, index: decoded.append(index) or read_chunk(array, index))
    # thin windows along the chunk borders, as a border task reads them: each chunk touched by several
    windows = [(slice(None), slice(y - 3, y + 3), slice(x, x + 100)) for y in (432, 864) for x in range(0, 600, 50)]
    windows += [(slice(None), slice(y, y + 100), slice(429, 435)) for y in range(0, 900, 50)]
    got = ChunkCache(prob, kept=1).windows(windows)  # one by one, a chunk kept would decode them again and again
    for window, part in zip(windows, got, strict=True):
        np.testing.assert_array_equal(part, prob[window])
    touched = {(0, y // 432, x // 432) for w in windows for y in range(w[1].start, w[1].stop) for x in range(w[2].start, w[2].stop)}
    assert sorted(decoded) == sorted(touched)


@pytest.mark.e2e
def test_chunks_of_real_maps_read_as_zarr_reads_them(cmu_slide: Path, cluster, tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path, [{"path": str(cmu_slide), "id": "cmu"}], processing={"chunk": 1008})
    arrays = map_arrays(open_slide_maps(run_ok(cohort, cluster) / "maps" / "cmu"))
    assert {"nuclei_prob", "nuclei_class", "tissue_prob", "tissue_class"} <= set(arrays)
    assert all(len(chunk_indices(a)) > 1 for a in arrays.values())
    for array in arrays.values():
        assert array[:].any()  # real values, not only the fill
        assert_reads_as_zarr(array)


@pytest.mark.parametrize("layout", ["sharded", "in memory"])
def test_chunks_of_other_layouts_read_through_zarr(tmp_path: Path, layout: str) -> None:
    store = zarr.storage.MemoryStore() if layout == "in memory" else tmp_path / "a.zarr"
    shards = (2, 200, 200) if layout == "sharded" else None
    array = zarr.create_array(store, shape=(2, 333, 250), chunks=(2, 100, 100), shards=shards, dtype="uint16", fill_value=0)
    array[...] = np.random.default_rng(2).integers(0, 60000, array.shape)
    array[:, :100, :100] = 0
    assert_reads_as_zarr(array)


def chunk_files(array: zarr.Array) -> dict[str, bytes]:
    folder = Path(array.store.root) / array.path
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_chunks_written_past_zarr_are_the_files_zarr_writes(tmp_path: Path, dtype: str) -> None:
    """Chunk by chunk, twice over (the second pass overwrites, some chunks with zeros: their files go)."""
    by_zarr, past_zarr = (
        map_arrays(create_slide_maps(tmp_path / name, shape=(1000, 700), chunk=432, specs=SPECS, dtype=dtype, attrs={"mpp": 0.5}))
        for name in ("zarr", "past")
    )
    rng = np.random.default_rng(3)
    for zeroed in ({(1, 0)}, {(0, 0), (2, 1)}):  # (row, column) of the chunks written all zero
        for name, array in by_zarr.items():
            for index in chunk_indices(array):
                window = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
                shape = tuple(w.stop - w.start for w in window)
                random = rng.integers(0, 256, shape) if dtype == "uint8" or name == "classes" else rng.random(shape)
                values = random.astype(array.dtype) * (index[-2:] not in zeroed)
                array[window] = values
                # tile mode passes slices of a whole image: not contiguous
                write_chunk_file(past_zarr[name], index, np.asfortranarray(values))
    for name, array in by_zarr.items():
        files = chunk_files(array)
        assert sum(name.startswith("c/") for name in files) < len(chunk_indices(array))  # all-zero chunks are not stored
        assert chunk_files(past_zarr[name]) == files
        np.testing.assert_array_equal(map_arrays(open_slide_maps(tmp_path / "past"))[name][...], array[...])


def test_chunks_of_other_layouts_are_written_through_zarr() -> None:
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(2, 150, 250), chunks=(2, 100, 100), dtype="uint16", fill_value=0)
    values = np.random.default_rng(4).integers(0, 60000, (2, 50, 100)).astype(np.uint16)
    write_chunk_file(array, (0, 1, 1), values)
    np.testing.assert_array_equal(array[:, 100:, 100:200], values)
    assert not array[:, :100].any()
    with pytest.raises(ValueError, match="shape"):
        write_chunk_file(array, (0, 1, 2), values)  # the last chunk holds 50 px, not 100
