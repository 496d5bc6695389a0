"""Where the workers come from: this machine, SLURM, Kubernetes, or an existing scheduler.

`start_cluster(spec)` is a context manager yielding `(target, has_gpu_workers)`: `target` is
what `distributed.Client(target)` takes (a cluster object or a scheduler address), and the
cluster we started is closed when the block ends. `placement(has_gpu_workers)` gives each
kind of task its `resources=`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from cerberus_batch.cluster.placement import Placement, placement
from cerberus_batch.cluster.spec import ClusterSpec
from cerberus_batch.errors import ClusterError

__all__ = ["ClusterSpec", "Placement", "placement", "start_cluster", "submission_preview"]


@contextmanager
def start_cluster(spec: ClusterSpec) -> Iterator[tuple[Any, bool]]:
    if spec.kind == "address":
        from cerberus_batch.cluster.address import connected

        with connected(spec.address) as started:
            yield started
        return
    if spec.kind == "local":
        from cerberus_batch.cluster.local import gpu_count, local_cluster

        gpus = gpu_count()
        with local_cluster(spec, gpus) as cluster:
            yield cluster, gpus > 0
    elif spec.kind == "slurm":
        from cerberus_batch.cluster.slurm import slurm_cluster

        with slurm_cluster(spec) as cluster:
            yield cluster, spec.slurm.gpus_per_job > 0
    else:
        from cerberus_batch.cluster.kubernetes import kubernetes_cluster

        with kubernetes_cluster(spec) as cluster:
            yield cluster, spec.kubernetes.gpus_per_worker > 0


def submission_preview(spec: ClusterSpec) -> str:
    """What would be submitted for review: the SLURM job script or the Kubernetes manifests."""
    if spec.kind == "slurm":
        from cerberus_batch.cluster.slurm import job_script

        return job_script(spec)
    if spec.kind == "kubernetes":
        import yaml

        from cerberus_batch.cluster.kubernetes import manifests

        return yaml.safe_dump_all(manifests(spec), sort_keys=False)
    raise ClusterError(f"cluster kind {spec.kind!r} submits nothing to review (only slurm and kubernetes do)")
