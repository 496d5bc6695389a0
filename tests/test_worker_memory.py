"""Worker processes reuse the arrays their tasks free, and give them back for the model's pass (`pipeline.worker_memory`).

Counted in page faults: an array the kernel maps afresh faults in every page it touches; one served
from memory malloc kept faults in none. Each case runs in a new process, with the malloc setting Dask
gives its workers, so this test process's own heap is left as it was.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PAGES = 3 * 2**20 // 4096  # a 3 MiB array: under `REUSED_BELOW`, over glibc's 128 KiB

PROBE = f"""
import json, resource
import numpy as np
from cerberus_batch.pipeline.worker_memory import heap_given_back, reuse_freed_memory

held = []

def faults():
    \"\"\"Page faults taken to fill a new 3 MiB array, freed below one still held, as a task frees
    (the heap's top goes back to the system: Dask's workers trim it).\"\"\"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    array = np.ones({PAGES * 4096}, np.uint8)
    taken = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    held.append(np.ones_like(array))
    del array
    return taken

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

faults()
seen = {{"default": [faults(), faults()]}}
seen["took"] = reuse_freed_memory()
faults()  # the first array served from the heap grows it
seen["reused"] = [faults(), faults()]
freed = [np.ones({PAGES * 4096}, np.uint8) for _ in range(8)]  # 24 MiB a task freed
held.append(np.ones_like(freed[0]))
del freed
before = resident()
with heap_given_back():
    seen["given back"] = (before - resident()) / {PAGES * 4096}
    seen["model"] = faults()
faults()
seen["after the model"] = [faults(), faults()]
print(json.dumps(seen))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_freed_arrays_are_reused_and_given_back_for_the_models_pass() -> None:
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")  # as Dask starts its workers
    seen = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True).stdout)
    assert seen["took"] is True
    assert all(f >= 0.9 * PAGES for f in seen["default"]), seen  # every page faulted in again, each time
    assert all(f <= 0.05 * PAGES for f in seen["reused"]), seen
    assert seen["given back"] >= 7, seen  # what the task freed is not under the model's peak
    assert seen["model"] >= 0.9 * PAGES, seen
    assert all(f <= 0.05 * PAGES for f in seen["after the model"]), seen  # and reused again after it
