"""The default cluster: worker processes on this machine."""

from __future__ import annotations

import os

from distributed import LocalCluster
from distributed.deploy.spec import close_clusters

from cerberus_batch.cluster import interrupts
from cerberus_batch.cluster.dashboard import start_scheduler
from cerberus_batch.cluster.placement import worker_resources
from cerberus_batch.cluster.spec import ClusterSpec


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a broken CUDA install means "no GPU", not a crash
        return 0


def cpu_worker_count(spec: ClusterSpec, gpus: int) -> int:
    """As asked, else one per free core: each GPU worker keeps a core busy feeding its GPU."""
    if spec.workers:
        return spec.workers
    free = (os.cpu_count() or 1) - gpus
    return max(1, free // spec.threads_per_worker)


def local_cluster(spec: ClusterSpec, gpus: int) -> LocalCluster:
    """CPU workers, plus one worker per GPU that carries the `GPU` resource and sees only its GPU."""
    try:
        cluster = start_scheduler(lambda: _local_cluster(spec, gpus))
    except KeyboardInterrupt:
        # Ctrl-C while it starts leaves a half-made cluster we hold no reference to: closed now, inside the run (its
        # noise goes to the run's log), not by distributed at exit on the console. The process is ending anyway.
        close_clusters()
        raise
    template = cluster.new_spec["options"]
    for device in range(gpus):
        options = {
            **template,
            "nthreads": 1,
            "resources": worker_resources(1, 1, cpu_only_workers=True),
            "env": {"CUDA_VISIBLE_DEVICES": str(device)},
        }
        cluster.worker_spec[f"gpu-{device}"] = {"cls": cluster.new_spec["cls"], "options": options}
    if gpus:
        cluster.scale(len(cluster.worker_spec))  # starts the GPU workers just added
    return cluster


def _local_cluster(spec: ClusterSpec, gpus: int) -> LocalCluster:
    """The CPU workers' cluster, over TLS on this machine; its workers leave Ctrl-C to the run."""
    return LocalCluster(
        n_workers=cpu_worker_count(spec, gpus),
        threads_per_worker=spec.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        # Per-run TLS credentials: on a shared login node, 127.0.0.1 is open to every user there.
        security=True,
        memory_limit=spec.memory_limit,
        dashboard_address=spec.dashboard_address,
        resources=worker_resources(0, spec.threads_per_worker, cpu_only_workers=bool(gpus)),
        preload=[interrupts.__name__],
    )
