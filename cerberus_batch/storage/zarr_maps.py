"""The Zarr store of a slide's probability maps (`OutputLayout.maps`), Zarr format 3.

Each map is a group of its own, an OME-NGFF 0.5 image: viewers (napari, neuroglancer, vizarr)
open only the first multiscale of a group, so maps sharing one would hide all but one. Its
full-resolution array is `<map>/0` (`LEVEL0`); the viewer levels `<map>/1`, `<map>/2`, … are made by
the chunk tasks (the first ones, `write_chunk`) and after the slide's inference (the rest,
`storage.pyramid`). The slide group's attributes describe the slide.

Each level-0 array is chunked exactly like the pipeline's chunk tasks (scaled to its
resolution), so no two tasks ever write the same Zarr chunk.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import OrderedDict, defaultdict
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.storage import LocalStore

from cerberus_batch.quantisation import CLASS_DTYPE
from cerberus_batch.storage.atomic import atomic_path, fsync_all, tree_paths
from cerberus_batch.storage.levels import MEAN, MODE, chunk_levels, halve, level_shapes
from cerberus_batch.vocabulary import StoredMap

LEVEL0 = "0"  # a map's full-resolution array, inside the map's group
# The slide group's layout: 3, a group per map with its first levels made by the chunk tasks. Groups of
# another layout (2: levels made after the slide; none: each map an array of the slide group) never
# match, so their slides are computed again in this layout.
LAYOUT = {"maps_layout": 3}
# zstd level 1, not Zarr's default (3): on real maps it encodes in 0.6x the time for 0.2% more bytes, and
# decodes the same; a reader needs no level, so groups written at either read alike.
COMPRESSOR = ZstdCodec(level=1)


def maps_match(path: Path, attrs: Mapping[str, Any]) -> bool:
    """Whether `path` holds a complete map group of this layout made with exactly these attributes."""
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError):
        return False
    expected = {**_plain(attrs), **LAYOUT}
    return {k: group.attrs.get(k) for k in expected} == expected


def create_slide_maps(
    path: Path,
    *,
    shape: tuple[int, int],
    chunk: int,
    specs: list[StoredMap],
    dtype: str,
    attrs: Mapping[str, Any],
) -> zarr.Group:
    """Create the (empty) map group of one slide, replacing whatever is at `path`.

    Built beside `path` and renamed into place, so a crash never leaves a group
    without its arrays or attributes. `shape` is the processing-pixel (h, w) of the
    output grid, a whole number of cells; `attrs` must hold the true µm per processing px (`mpp`).
    """
    with atomic_path(path) as partial:
        group = zarr.open_group(partial, mode="w", zarr_format=3)
        h, w = shape
        for spec in specs:
            side = max(1, chunk // spec.downsample)
            lead = () if spec.channels is None else (spec.channels,)
            shapes = level_shapes(lead + (h // spec.downsample, w // spec.downsample))
            image = group.create_group(spec.name, attributes={"ome": _ngff(spec, float(attrs["mpp"]))})
            for k in range(1 + chunk_levels(side, len(shapes))):  # level 0 and those its chunk tasks write
                image.create_array(
                    str(k),
                    shape=shapes[k],
                    chunks=lead + (side >> k,) * 2,
                    dtype=dtype if spec.probability else CLASS_DTYPE,
                    fill_value=0,
                    compressors=COMPRESSOR,
                    dimension_names=(("c",) if lead else ()) + ("y", "x"),
                )
        group.attrs.update({**_plain(attrs), **LAYOUT})
    return zarr.open_group(path, mode="r+")


def write_chunk(
    levels: Mapping[str, zarr.Array], x: int, y: int, stored: Mapping[str, np.ndarray], specs: list[StoredMap],
) -> None:
    """Write one chunk task's maps, and the levels it makes of them (`levels.chunk_levels`), into a slide
    group's `levels` (`level_arrays`), then flush them to disk; (x, y) is its processing-pixel origin, on
    the chunk grid.

    Chunk files are renamed into place as Zarr does, creating their folders (`c/0/<row>/`), and
    neither is fsynced then; the resume ledger may only record a chunk whose bytes and folder entries
    would survive a power cut or a lost node.
    """
    flushed: list[Path] = []
    for spec in specs:
        values = stored[spec.name]
        level0 = levels[f"{spec.name}/{LEVEL0}"]
        ys, xs = y // spec.downsample, x // spec.downsample
        for k in range(1 + chunk_levels(level0.chunks[-1], len(level_shapes(level0.shape)))):
            if k:
                values = halve(values, MEAN if spec.probability else MODE)
            flushed += _write(levels[f"{spec.name}/{k}"], ys >> k, xs >> k, values)
    fsync_all(flushed)  # all at once: concurrent fsyncs share the journal's commits


def _write(array: zarr.Array, ys: int, xs: int, values: np.ndarray) -> list[Path]:
    """Write `values` at map px (ys, xs) of `array` (a chunk task's one chunk, or tile mode's whole image),
    chunk by chunk (`write_chunk_file`); returns the files and folders to fsync."""
    (h, w), (side_y, side_x) = values.shape[-2:], array.chunks[-2:]
    if ys % side_y or xs % side_x:
        raise ValueError(f"a write at map px ({ys}, {xs}) does not start on a chunk of {array.path}")
    flushed = []
    for row in range(ys // side_y, -(-(ys + h) // side_y)):
        for column in range(xs // side_x, -(-(xs + w) // side_x)):
            part = values[..., row * side_y - ys : (row + 1) * side_y - ys, column * side_x - xs : (column + 1) * side_x - xs]
            written = write_chunk_file(array, (0,) * (array.ndim - 2) + (row, column), part)
            if written is not None and written.exists():
                flushed += tree_paths(Path(array.store.root) / array.path, written)
    return flushed


def write_chunk_file(array: zarr.Array, index: tuple[int, ...], values: np.ndarray) -> Path | None:
    """Store `values` as chunk `index` of `array` (the chunk clipped to the array), byte for byte as Zarr
    would, and return what changed: the chunk file, or its folder when an all-zero chunk is not stored
    (a folder that may not exist: then nothing changed); None for an array in no local folder.

    Zarr's writes go through its async codec pipeline, several event-loop round trips per array, which cost
    twice the encoding on a chunk task's maps; arrays of our own layout (`_plain_zstd`) are written here with
    the codec Zarr itself uses, padded with the fill value to the whole chunk and renamed into place as Zarr
    does. Any other array is written through Zarr."""
    window = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
    if values.shape != tuple(s.stop - s.start for s in window):
        raise ValueError(f"values of shape {values.shape} for chunk {index} of {array.path} ({array.shape})")
    local = isinstance(array.store, LocalStore)
    path = Path(array.store.root) / array.path / array.metadata.encode_chunk_key(index) if local else None
    if not _plain_zstd(array) or array.fill_value != 0:
        array[window] = values
        return path if path is None or path.is_file() else path.parent
    if not values.any():  # as Zarr: an all-fill chunk is not stored, and an older one goes
        path.unlink(missing_ok=True)
        return path.parent
    chunk = np.ascontiguousarray(values, np.dtype(array.dtype).newbyteorder("<"))
    if chunk.shape != array.chunks:  # Zarr stores edge chunks whole
        chunk = np.zeros(array.chunks, chunk.dtype)
        chunk[tuple(slice(0, s.stop - s.start) for s in window)] = values
    zstd = array.metadata.codecs[1]
    data = Zstd(level=zstd.level, checksum=zstd.checksum).encode(chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def open_slide_maps(path: Path, writable: bool = False) -> zarr.Group:
    return zarr.open_group(path, mode="r+" if writable else "r")


def map_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The full-resolution array of each map of a slide group, by map name."""
    return _level0(level_arrays(group))


def level_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """Every level array of a slide group by its path (`<map>/<level>`), their metadata read together
    (one by one, each is an event-loop round trip: as long as the encoding of a chunk)."""
    return {path: array for path, array in group.members(max_depth=None) if isinstance(array, zarr.Array)}


def _level0(levels: Mapping[str, zarr.Array]) -> dict[str, zarr.Array]:
    return {path.split("/")[0]: array for path, array in levels.items() if path.endswith(f"/{LEVEL0}")}


class OpenMaps(NamedTuple):
    """A slide's map group as a worker process keeps it open (`worker_maps`)."""

    attrs: Mapping[str, Any]  # the slide group's, read-only: every task of the process shares them
    levels: Mapping[str, zarr.Array]  # those made with the group (`level_arrays`), not those the pyramid adds later

    @property
    def arrays(self) -> dict[str, zarr.Array]:
        """The full-resolution array of each map, by map name (`map_arrays`)."""
        return _level0(self.levels)


def worker_maps(path: Path, writable: bool = False) -> OpenMaps:
    """A slide's map group, its metadata read once per process: every task of a slide would otherwise
    read it again, a dozen files in as many event-loop round trips. A group made anew (a new plan:
    `create_slide_maps` renames a new one into place) is a new file, and is read anew."""
    made = (path / "zarr.json").stat()
    return _open_maps(path, writable, (made.st_ino, made.st_mtime_ns, made.st_size))


@lru_cache(maxsize=8)
def _open_maps(path: Path, writable: bool, made: tuple[int, int, int]) -> OpenMaps:
    group = open_slide_maps(path, writable)
    return OpenMaps(MappingProxyType(dict(group.attrs)), MappingProxyType(level_arrays(group)))


def _ngff(spec: StoredMap, mpp: float) -> dict:
    """A map's OME-NGFF 0.5 `ome` attribute, naming its level 0 only (`storage.pyramid` adds the rest).

    A map px spans `downsample` processing px, so its scale is that many times `mpp` µm and its
    centre lies (downsample - 1) / 2 processing px past theirs: the px centres of every map line up
    on the slide, with processing px (0, 0) at 0 µm. `type` is how its levels are made: the mean
    of probabilities, the most common class."""
    px = mpp * spec.downsample
    lead = 0 if spec.channels is None else 1
    return {
        "version": "0.5",
        "multiscales": [{
            "name": spec.name,
            "axes": [{"name": "c", "type": "channel"}] * lead
            + [{"name": axis, "type": "space", "unit": "micrometer"} for axis in ("y", "x")],
            "datasets": [{
                "path": LEVEL0,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0] * lead + [px, px]},
                    {"type": "translation", "translation": [0.0] * lead + [(px - mpp) / 2] * 2},
                ],
            }],
            "type": MEAN if spec.probability else MODE,
        }],
    }


def _plain(attrs: Mapping[str, Any]) -> dict:
    """Attributes as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(attrs)))


class ChunkCache:
    """A Zarr array read window by window, a whole chunk at a time (`read_chunk`), keeping its last `kept` chunks.

    Border and merge tasks read many small windows across chunk borders; each would decode every
    chunk it touches again (a 2016² chunk of a probability map is 8 MB). Windows read one by one come
    in raster order, so a few chunks kept decode each about once; border tasks read theirs a batch
    at a time (`windows`). Reads basic slices (step 1) only.
    """

    def __init__(self, array: zarr.Array, kept: int = 8) -> None:
        self.array, self.shape, self.dtype, self.kept = array, array.shape, array.dtype, kept
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def __getitem__(self, key: slice | tuple[slice, ...]) -> np.ndarray:
        window, grid = self._span(key)
        whole = [range(i * c, min((i + 1) * c, n)) for g, c, n in zip(grid, self.array.chunks, self.shape) for i in g[:1]]
        if whole == window:  # one whole chunk (a chunk task reads its own): the caller may keep it, no copy
            index = tuple(g[0] for g in grid)
            return self._chunks.pop(index) if index in self._chunks else read_chunk(self.array, index)
        out = np.empty(tuple(len(r) for r in window), self.dtype)
        for index in itertools.product(*grid):
            self._copy(out, window, index, self._chunk(index))
        return out

    def windows(self, keys: Sequence[tuple[slice, ...]]) -> list[np.ndarray]:
        """Many windows at once, each chunk they touch decoded once (not kept): a task that knows its
        windows up front holds only them, and decodes no chunk twice however they lie."""
        spans = [self._span(key) for key in keys]
        out = [np.empty(tuple(len(r) for r in window), self.dtype) for window, _ in spans]
        users: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for k, (_, grid) in enumerate(spans):
            for index in itertools.product(*grid):
                users[index].append(k)
        for index, readers in sorted(users.items()):
            chunk = self._chunks[index] if index in self._chunks else read_chunk(self.array, index)
            for k in readers:
                self._copy(out[k], spans[k][0], index, chunk)
        return out

    def _span(self, key: slice | tuple[slice, ...]) -> tuple[list[range], list[range]]:
        """The window `key` reads (a range per axis) and the chunks it touches (a range of chunk indices per axis)."""
        key = key if isinstance(key, tuple) else (key,)
        window = [range(*k.indices(n)) for k, n in zip(key + (slice(None),) * (len(self.shape) - len(key)), self.shape)]
        grid = [range(r.start // c, -(-r.stop // c)) if len(r) else range(0) for r, c in zip(window, self.array.chunks)]
        return window, grid

    def _copy(self, out: np.ndarray, window: list[range], index: tuple[int, ...], chunk: np.ndarray) -> None:
        """The part of chunk `index` that lies in `window`, copied to its place in `out`."""
        origin = [i * c for i, c in zip(index, self.array.chunks)]
        take = tuple(slice(max(r.start, o) - o, min(r.stop, o + n) - o) for r, o, n in zip(window, origin, chunk.shape))
        put = tuple(slice(max(r.start, o) - r.start, min(r.stop, o + n) - r.start) for r, o, n in zip(window, origin, chunk.shape))
        out[put] = chunk[take]

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        if index in self._chunks:
            self._chunks.move_to_end(index)
            return self._chunks[index]
        chunk = read_chunk(self.array, index)
        self._chunks[index] = chunk
        if len(self._chunks) > self.kept:
            self._chunks.popitem(last=False)
        return chunk


def read_chunk(array: zarr.Array, index: tuple[int, ...]) -> np.ndarray:
    """Chunk `index` of `array` (clipped to the array), decoded as Zarr would.

    Zarr's reads go through its async codec pipeline, which costs as much as the decoding itself on a
    map chunk. Chunks of our own layout (a local file, bytes then zstd) are decoded here with the
    zstd codec Zarr itself uses (numcodecs); any other array is read through Zarr."""
    window = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
    if not _plain_zstd(array):
        return array[window]
    path = Path(array.store.root) / array.path / array.metadata.encode_chunk_key(index)
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # Zarr stores no chunk that is all fill value
        return np.full(tuple(s.stop - s.start for s in window), array.fill_value, array.dtype)
    # Zarr stores edge chunks whole, padded with the fill value.
    chunk = np.empty(array.chunks, np.dtype(array.dtype).newbyteorder("<"))
    Zstd().decode(data, out=chunk)
    inside = chunk[tuple(slice(0, s.stop - s.start) for s in window)]
    return np.ascontiguousarray(inside, array.dtype)  # as Zarr returns it: contiguous, native byte order


def _plain_zstd(array: zarr.Array) -> bool:
    """Whether `array`'s chunks are local files of little-endian bytes compressed by zstd, and nothing else."""
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    return (
        isinstance(array.store, LocalStore)
        and len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and codecs[0].endian in (None, Endian.little)
        and isinstance(codecs[1], ZstdCodec)
        and not array.metadata.storage_transformers
    )
