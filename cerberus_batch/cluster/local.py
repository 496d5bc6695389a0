"""The default cluster: worker processes on this machine."""

from __future__ import annotations

import os

from distributed import LocalCluster

from cerberus_batch.cluster.spec import ClusterSpec


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a broken CUDA install means "no GPU", not a crash
        return 0


def local_cluster(spec: ClusterSpec) -> LocalCluster:
    """One worker per GPU (carrying the `GPU` resource) when there are GPUs, else CPU workers."""
    gpus = gpu_count()
    workers = spec.workers or gpus or max(1, (os.cpu_count() or 1) // spec.threads_per_worker)
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=spec.threads_per_worker,
        processes=True,
        memory_limit=spec.memory_limit,
        dashboard_address=spec.dashboard_address,
        resources={"GPU": 1} if gpus else None,
    )
