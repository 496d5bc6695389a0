"""Regions of a tiled TIFF level decoded tile by tile straight into the region's array.

tiffslide's Zarr view of a level gives the same pixels through Zarr's asynchronous chunk pipeline,
which costs about half again the tiles' own decoding (a chunk task's read with its context margins:
CPU 0.25 -> 0.18 s on a 2 × 2 mosaic of CMU-1-Small-Region). Tifffile still reads and decodes each
tile (`TiffPage.decode`: every compression it knows), so the pixels are the same.

Neighbouring chunks' context margins overlap, so the tiles along chunk borders are read by two to four
chunk tasks, often on the same worker: a process keeps its most recently used decoded tiles, of every
slide it has open, up to `TILE_CACHE_BYTES` in all (`PROCESS_TILES`), whatever the slides' size and number,
and a worker reading a neighbour decodes them once.
Tiles are decoded one after another in the reading thread: a worker runs one task per core, so threads
decoding in parallel would only take other tasks' cores.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
from cachetools import LRUCache
from tifffile import TiffPage, TiffPageSeries

TILE_CACHE_BYTES = 16 * 2**20  # per process: about 85 decoded 256-px RGB tiles, the margin a chunk shares with the next
_GRIDS = itertools.count()  # each grid's own key in a cache: ids of closed slides' objects may come back


class DamagedTile(Exception):
    """A tile that cannot be read or decoded (its cause chained): the slide's fault, not ours."""


class TileCache:
    """Decoded tiles of every open slide of this process, keyed by (grid, tile index), least recently
    used first out; shared by the threads of a worker."""

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES) -> None:
        self._tiles: LRUCache[tuple[int, int], np.ndarray] = LRUCache(max_bytes, getsizeof=lambda tile: tile.nbytes)
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:  # (grid, tile index)
        with self._lock:
            return self._tiles.get(key)

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        if tile.nbytes > self._tiles.maxsize:
            return  # a tile bigger than the whole cache is not kept
        tile.flags.writeable = False  # shared by every later read
        with self._lock:
            self._tiles[key] = tile


PROCESS_TILES = TileCache()  # what every open slide of this process reads through


class TileGrid:
    """One level's tiles, where it is a single tiled page whose every tile is stored."""

    def __init__(self, page: TiffPage, cache: TileCache) -> None:
        self._page = page
        self.key = next(_GRIDS)  # its tiles' key in the cache, with their index
        self._cache = cache
        self._tile = page.chunks[:2]  # (h, w) px
        self._columns = page.chunked[1]
        self._samples = page.samplesperpixel
        self._decode_args = {"_fullsize": True}  # edge tiles come whole; the region crops them
        if page.jpegtables is not None:
            self._decode_args["jpegtables"] = page.jpegtables
        page.parent.filehandle.set_lock(True)  # threads of one worker share the file handle

    @staticmethod
    def of(series: TiffPageSeries, level: int, cache: TileCache = PROCESS_TILES) -> TileGrid | None:
        """The grid of the series' `level`, or None where Zarr's general path must read it: strips, several
        pages, NDPI's JPEG headers, other sample layouts or tiles left unstored."""
        pages = series.levels[level].pages
        page = pages[0] if len(pages) == 1 else None
        if not isinstance(page, TiffPage) or not page.is_tiled or page.jpegheader is not None:
            return None
        if page.planarconfig != 1 or any(n != 1 for n in page.chunked[2:]) or 0 in page.databytecounts:
            return None  # 1: contiguous samples, tiles only in (rows, columns)
        return TileGrid(page, cache)

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level px region (y1 - y0, x1 - x0, samples), inside the level."""
        th, tw = self._tile
        out = np.empty((y1 - y0, x1 - x0, self._samples), self._page.dtype)
        missing = []
        for index in self.tile_indices(x0, y0, x1, y1):
            tile = self._cache.get((self.key, index))
            if tile is None:
                missing.append(index)
            else:
                self._place(out, tile, index, x0, y0, x1, y1)
        page, fh = self._page, self._page.parent.filehandle
        offsets = [page.dataoffsets[i] for i in missing]
        counts = [page.databytecounts[i] for i in missing]
        for data, index in fh.read_segments(offsets, counts, missing, lock=fh.lock, sort=True):
            tile = self._decoded(data, index).reshape(th, tw, self._samples)
            self._cache.put((self.key, index), tile)
            self._place(out, tile, index, x0, y0, x1, y1)
        return out

    def _decoded(self, data: bytes | None, index: int) -> np.ndarray:
        """Tile `index` decoded from its stored `data`; what the codec refuses is a `DamagedTile`."""
        try:
            return self._page.decode(data, index, **self._decode_args)[0]
        except Exception as err:  # noqa: BLE001 - each codec has errors of its own
            raise DamagedTile(f"tile {index}: {err}") from err

    def tile_indices(self, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        """Indices of the tiles a level px region touches, row by row."""
        th, tw = self._tile
        return [r * self._columns + c for r in range(y0 // th, -(-y1 // th)) for c in range(x0 // tw, -(-x1 // tw))]

    def _place(self, out: np.ndarray, tile: np.ndarray, index: int, x0: int, y0: int, x1: int, y1: int) -> None:
        """Copy the part of tile `index` inside the region into the region's array."""
        th, tw = self._tile
        ty, tx = divmod(index, self._columns)
        ty, tx = ty * th, tx * tw
        top, left, bottom, right = max(y0, ty), max(x0, tx), min(y1, ty + th), min(x1, tx + tw)
        out[top - y0 : bottom - y0, left - x0 : right - x0] = tile[top - ty : bottom - ty, left - tx : right - tx]
