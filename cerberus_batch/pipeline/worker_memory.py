"""A worker process's tasks reuse the memory they free, and its model still peaks as it always did.

A chunk task allocates and frees megabyte arrays one after another (a 2016² chunk's uint8 map is
3.9 MiB). glibc's malloc gives each block of 128 KiB or more its own mapping and unmaps it when it
is freed, so the next array is fresh pages that the kernel faults in and zeroes again. Dask's
workers set MALLOC_TRIM_THRESHOLD_, which also freezes that 128 KiB threshold (malloc(3),
M_MMAP_THRESHOLD), so it never adapts. Here blocks under `REUSED_BELOW` come from malloc's heap and
are reused as they are; larger ones, and every block of the model's forward pass (`mapped_afresh`),
are mapped as before, so the heap the tasks reuse never sits under the model's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from typing import Iterator

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
GLIBC_THRESHOLD = 128 * 2**10  # glibc's default, and where Dask's workers leave it
# Above a chunk's uint8 map, below its float32 maps: the stain run's CPU side 0.14 core-s per tissue
# Mpx against 0.16, where 32 MiB (glibc's cap) raised a Cerberus worker's peak RSS by 0.3 GB.
REUSED_BELOW = 4 * 2**20

_libc: ctypes.CDLL | None = None  # glibc, once `reuse_freed_memory` has set it up in this process


def reuse_freed_memory() -> bool:
    """Serve blocks under `REUSED_BELOW` from malloc's heap in this process; False where malloc is not glibc's."""
    global _libc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        took = libc.mallopt(M_MMAP_THRESHOLD, REUSED_BELOW) == 1  # musl's mallopt is a stub that answers 0
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (macOS)
        return False
    _libc = libc if took else None
    return took


@contextmanager
def mapped_afresh() -> Iterator[None]:
    """Within the block, malloc as glibc's default has it, on a heap trimmed first: for a model's forward
    pass, whose peak is a worker's peak. A no-op where `reuse_freed_memory` has not taken."""
    if _libc is None:
        yield
        return
    _libc.mallopt(M_MMAP_THRESHOLD, GLIBC_THRESHOLD)
    _libc.malloc_trim(0)  # the free pages the tasks left in the heap go back before the peak
    try:
        yield
    finally:
        _libc.mallopt(M_MMAP_THRESHOLD, REUSED_BELOW)
