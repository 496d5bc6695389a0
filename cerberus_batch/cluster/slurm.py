"""Workers as SLURM jobs (dask-jobqueue), added and removed as the run needs them.

By default the scheduler, the workers and this client talk TLS. Each run makes its own
self-signed certificate; the jobs read it and its key from files in a folder only the user can
read, on a filesystem every node sees, so no key material goes into the job script.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from distributed.security import Security

from cerberus_batch.cluster.dashboard import start_scheduler
from cerberus_batch.cluster.placement import resources_arg, worker_resources
from cerberus_batch.cluster.spec import ClusterSpec, SlurmSpec
from cerberus_batch.errors import ClusterError


def _slurm_cluster_class():
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("cluster kind 'slurm' needs dask-jobqueue: pip install cerberus-batch[slurm]") from None
    return SLURMCluster


def _private_file(path: Path, text: str) -> str:
    """`text` written to a new file that only this user can read."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    return str(path)


@contextmanager
def run_security(s: SlurmSpec) -> Iterator[Optional[Security]]:
    """The run's TLS settings (None with `tls: false`); its files are removed when the block ends."""
    if not s.tls:
        yield None
        return
    base = Path(os.path.expandvars(s.tls_directory)).expanduser()
    if not base.is_dir():
        raise ClusterError(f"slurm.tls_directory {base} is not a folder (it must be one every node sees)")
    try:
        made = Security.temporary()
    except ImportError:
        raise ClusterError("slurm TLS needs the cryptography package: pip install cryptography (or set slurm.tls: false)") from None
    with tempfile.TemporaryDirectory(prefix=".cerberus-batch-tls-", dir=base) as folder:  # mode 0700
        # The one self-signed certificate is both the CA and every role's identity.
        cert = _private_file(Path(folder) / "cert.pem", made.tls_ca_file)
        key = _private_file(Path(folder) / "key.pem", made.tls_worker_key)
        yield Security(
            require_encryption=True, tls_ca_file=cert,
            tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_worker_cert=cert, tls_worker_key=key,
            tls_client_cert=cert, tls_client_key=key,
        )


def new_slurm_cluster(spec: ClusterSpec, security: Optional[Security], *, preview: bool = False) -> Any:
    """The SLURMCluster for `spec.slurm`, with no jobs submitted yet.

    A `preview`'s scheduler listens on this machine's loopback, not on `interface` (a cluster
    network such as ib0 that a laptop lacks): it only fills in the job script, which still tells
    the workers to use `interface`. Neither makes the log folder; `slurm_cluster` does.
    """
    s = spec.slurm
    threads = max(1, s.cores // s.workers_per_job)
    # GPU jobs have no GPU-less workers, so their workers carry CPU slots too.
    resources = worker_resources(s.gpus_per_job, threads, cpu_only_workers=False)
    worker_args = ["--resources", resources_arg(resources)]
    directives = list(s.job_directives)
    if s.log_directory:  # %x: the job's name
        directives += [f"-e {s.log_directory}/%x-%J.err", f"-o {s.log_directory}/%x-%J.out"]
    if s.gpus_per_job:
        directives.append(f"--gres=gpu:{s.gpus_per_job}")
        worker_args += ["--preload", "cerberus_batch.cluster.gpu_pin"]
    cluster_class = _slurm_cluster_class()
    return start_scheduler(
        lambda: cluster_class(
            queue=s.queue,
            account=s.account,
            walltime=s.walltime,
            cores=s.cores,
            memory=s.memory,
            processes=s.workers_per_job,
            job_extra_directives=directives,
            worker_extra_args=worker_args,
            local_directory=s.local_directory,
            python=s.python or sys.executable,
            interface=s.interface,
            security=security,  # also makes the scheduler and the job script's workers use tls://
            scheduler_options={"host": "127.0.0.1", "dashboard": False} if preview else {"dashboard_address": spec.dashboard_address},
        )
    )


@contextmanager
def slurm_cluster(spec: ClusterSpec) -> Iterator[Any]:
    """A SLURMCluster that keeps between min_jobs and max_jobs jobs, as the queue of tasks needs."""
    if spec.slurm.log_directory:  # SLURM does not make the folder it writes the jobs' output to
        Path(spec.slurm.log_directory).mkdir(parents=True, exist_ok=True)
    with run_security(spec.slurm) as security, new_slurm_cluster(spec, security) as cluster:
        cluster.adapt(minimum_jobs=spec.slurm.min_jobs, maximum_jobs=spec.slurm.max_jobs)
        yield cluster


# What a preview cannot know, as it shows it, and what each run fills in there when it submits its jobs.
SCHEDULER_PLACEHOLDER = "<scheduler-address>"
NAME_PLACEHOLDER = "<worker-name>"
TLS_PLACEHOLDER = ".cerberus-batch-tls-<run>"
PLACEHOLDERS = {
    SCHEDULER_PLACEHOLDER: "its scheduler's address on slurm.interface",
    NAME_PLACEHOLDER: "each worker's name",
    TLS_PLACEHOLDER: "its certificate folder, removed when it ends",
}


def job_script(spec: ClusterSpec) -> str:
    """The batch script each worker job would be submitted with (TLS files are named, not shown), its
    run-specific parts marked as placeholders."""
    with run_security(spec.slurm) as security, new_slurm_cluster(spec, security, preview=True) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler.address  # e.g. tls://127.0.0.1:40693: the preview's own scheduler
        folder = Path(security.tls_ca_file).parent.name if security else None
    scheme, _ = address.split("://", 1)
    script = script.replace(f" {address} ", f" {scheme}://{SCHEDULER_PLACEHOLDER} ").replace(" --name dummy-name ", f" --name {NAME_PLACEHOLDER} ")
    if folder:
        script = script.replace(f"/{folder}/", f"/{TLS_PLACEHOLDER}/")
    head, command = script.rstrip("\n").rsplit("\n", 1)
    note = "\n".join(f"#   {mark}: {meaning}" for mark, meaning in PLACEHOLDERS.items() if mark in command)
    return f"{head.rstrip()}\n\n# Preview: each run fills in these placeholders when it submits its jobs:\n{note}\n\n{command}\n"
