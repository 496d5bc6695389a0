"""An existing Dask scheduler, reached at tcp://host:port or, with TLS files, tls://host:port."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dask
from distributed import Client
from distributed.security import Security

from cerberus_batch.cluster.placement import CPU, GPU
from cerberus_batch.cluster.spec import AddressSpec
from cerberus_batch.errors import ClusterError


def tls_config(spec: AddressSpec) -> dict[str, str]:
    """Dask settings that make every `Client` (and its `Security()`) use the cohort's TLS files."""
    if spec.ca_file is None:
        return {}
    return {
        "distributed.comm.tls.ca-file": str(spec.ca_file),
        "distributed.comm.tls.client.cert": str(spec.cert),
        "distributed.comm.tls.client.key": str(spec.key),
        "distributed.comm.require-encryption": True,
    }


def gpu_workers(spec: AddressSpec) -> bool:
    """Whether the scheduler's workers include GPU ones; those need CPU workers (or CPU slots) too."""
    with Client(spec.scheduler, security=Security(), timeout="30s") as client:
        resources = [w.get("resources", {}) for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    gpu = any(GPU in r for r in resources)
    if gpu and not any(CPU in r for r in resources):
        raise ClusterError(
            f"{spec.scheduler}: workers carry {GPU} but none carries {CPU}; "
            f"start CPU workers with `dask worker --resources {CPU}=<threads>`"
        )
    return gpu


@contextmanager
def connected(spec: AddressSpec) -> Iterator[tuple[str, bool]]:
    """(scheduler address, has GPU workers), with the TLS settings in force inside the block."""
    with dask.config.set(tls_config(spec)):
        yield spec.scheduler, gpu_workers(spec)
