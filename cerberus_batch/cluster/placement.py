"""Which workers each kind of task may run on.

When a cluster has GPU workers, inference asks for the `GPU` resource and every other task
(planning, post-processing, merging) for `CPU`, which only CPU workers carry — or GPU workers
too, where a cluster has no other kind. Without GPU workers nothing is restricted.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU = "GPU"
CPU = "CPU"


@dataclass(frozen=True)
class Placement:
    inference: dict[str, int] | None  # the `resources=` of inference tasks
    cpu: dict[str, int] | None  # the `resources=` of every other task


def placement(gpu_workers: bool) -> Placement:
    if not gpu_workers:
        return Placement(inference=None, cpu=None)
    return Placement(inference={GPU: 1}, cpu={CPU: 1})


def worker_resources(gpus: int, threads: int, cpu_only_workers: bool) -> dict[str, int]:
    """A worker's resources: its GPU (if any), and CPU slots unless CPU-only workers do that work."""
    resources = {GPU: 1} if gpus else {}
    if not gpus or not cpu_only_workers:
        resources[CPU] = threads
    return resources


def resources_arg(resources: dict[str, int]) -> str:
    """The `dask worker --resources` form, e.g. "GPU=1,CPU=2"."""
    return ",".join(f"{name}={count}" for name, count in resources.items())
