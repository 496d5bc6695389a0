"""Worker preload: the workers of one SLURM job or pod share its GPUs, one GPU each.

`dask worker --nworkers N --name NAME` names its workers NAME-0 … NAME-(N-1); the suffix picks
this worker's device among CUDA_VISIBLE_DEVICES before anything initialises CUDA.
"""

from __future__ import annotations

import os


def pinned_devices(visible: str, worker_name: str) -> str:
    devices = [device for device in visible.split(",") if device.strip()]
    if len(devices) <= 1:
        return visible
    index = int(str(worker_name).rsplit("-", 1)[-1])
    return devices[index % len(devices)]


def dask_setup(worker) -> None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    os.environ["CUDA_VISIBLE_DEVICES"] = pinned_devices(visible, worker.name)
