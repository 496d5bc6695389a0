"""Where the workers come from: this machine, SLURM, Kubernetes, or an existing scheduler."""

from __future__ import annotations

from cerberus_batch.cluster.spec import ClusterSpec


def start_cluster(spec: ClusterSpec):
    """Start the cluster a cohort asks for; returns (cluster, has_gpu_workers)."""
    if spec.kind == "local":
        from cerberus_batch.cluster.local import gpu_count, local_cluster

        return local_cluster(spec), gpu_count() > 0
    raise NotImplementedError(f"cluster kind {spec.kind!r} is not available yet")
