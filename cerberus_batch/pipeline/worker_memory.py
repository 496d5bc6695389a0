"""A worker process's tasks reuse the memory they free, and its model still peaks as it always did.

A chunk task allocates and frees megabyte arrays one after another (a 2016² chunk's uint8 map is
3.9 MiB). glibc's malloc gives each new block of 128 KiB or more its own mapping and unmaps it when
it is freed, so the next array is fresh pages that the kernel faults in and zeroes again. Dask's
workers set MALLOC_TRIM_THRESHOLD_, which also freezes that 128 KiB threshold (malloc(3),
M_MMAP_THRESHOLD), so it never adapts. Here blocks under `REUSED_BELOW` come from malloc's heap and
are reused as they are; larger ones are mapped as before. The model's forward pass, where a worker
peaks, runs with glibc's default on a heap whose free pages went back first (`heap_given_back`).
The setting is the process's: with several threads, each thread's tasks share it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from typing import Iterator

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
GLIBC_THRESHOLD = 128 * 2**10  # glibc's default, and where Dask's workers leave it
# Above a chunk's uint8 map, where most of the gain is (bench_feed --stain-only: 0.137-0.144 core-s per
# tissue Mpx at 4 MiB, 0.149-0.157 at 2 MiB, 0.157-0.164 at 128 KiB); 32 MiB (glibc's cap) was no
# faster and raised a Cerberus worker's peak RSS (bench_memory).
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
def heap_given_back() -> Iterator[None]:
    """Within the block, glibc's default threshold, on a heap whose free pages went back to the system
    first: for a model's forward pass, whose peak is a worker's peak. A no-op where `reuse_freed_memory`
    has not taken."""
    if _libc is None:
        yield
        return
    _libc.mallopt(M_MMAP_THRESHOLD, GLIBC_THRESHOLD)
    _libc.malloc_trim(0)  # the free pages the tasks left in the heap go back before the peak
    try:
        yield
    finally:
        _libc.mallopt(M_MMAP_THRESHOLD, REUSED_BELOW)
