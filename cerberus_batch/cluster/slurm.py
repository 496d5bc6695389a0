"""Workers as SLURM jobs (dask-jobqueue), added and removed as the run needs them."""

from __future__ import annotations

import sys

from cerberus_batch.cluster.placement import resources_arg, worker_resources
from cerberus_batch.cluster.spec import ClusterSpec


def _slurm_cluster_class():
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RuntimeError("cluster kind 'slurm' needs dask-jobqueue: pip install cerberus-batch[slurm]") from None
    return SLURMCluster


def new_slurm_cluster(spec: ClusterSpec):
    """The SLURMCluster for `spec.slurm`, with no jobs submitted yet."""
    s = spec.slurm
    threads = max(1, s.cores // s.workers_per_job)
    # GPU jobs have no GPU-less workers, so their workers carry CPU slots too.
    resources = worker_resources(s.gpus_per_job, threads, cpu_only_workers=False)
    worker_args = ["--resources", resources_arg(resources)]
    directives = list(s.job_directives)
    if s.gpus_per_job:
        directives.append(f"--gres=gpu:{s.gpus_per_job}")
        worker_args += ["--preload", "cerberus_batch.cluster.gpu_pin"]
    return _slurm_cluster_class()(
        queue=s.queue,
        account=s.account,
        walltime=s.walltime,
        cores=s.cores,
        memory=s.memory,
        processes=s.workers_per_job,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        local_directory=s.local_directory,
        log_directory=s.log_directory,
        python=s.python or sys.executable,
        interface=s.interface,
        scheduler_options={"dashboard_address": spec.dashboard_address},
    )


def slurm_cluster(spec: ClusterSpec):
    """A SLURMCluster that keeps between min_jobs and max_jobs jobs, as the queue of tasks needs."""
    cluster = new_slurm_cluster(spec)
    cluster.adapt(minimum_jobs=spec.slurm.min_jobs, maximum_jobs=spec.slurm.max_jobs)
    return cluster


def job_script(spec: ClusterSpec) -> str:
    """The batch script each worker job would be submitted with."""
    with new_slurm_cluster(spec) as cluster:
        return cluster.job_script()
