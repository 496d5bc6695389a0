"""The `cluster:` section of a cohort file.

`kind` picks where the workers come from. The flat keys (`workers`, `threads_per_worker`,
`memory_limit`) describe local workers; each other kind has its own sub-section named after it
(`slurm:`, `kubernetes:`, `address:`), required for that kind and refused for any other.
`dashboard_address` is where a scheduler we start (local, SLURM) serves its dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Upper bounds, beyond which a number is a typo that would start or submit absurdly much.
MAX_NODE_CORES = 1024  # the largest single machines have a few hundred cores: workers, threads or processes on one
MAX_NODE_GPUS = 16  # the largest nodes carry 8, a few 16, accelerators
MAX_WORKERS = 10_000  # a Dask scheduler serves a few thousand workers: jobs or pods of a cohort
OnNode = Annotated[int, Field(ge=1, le=MAX_NODE_CORES)]
Gpus = Annotated[int, Field(ge=0, le=MAX_NODE_GPUS)]
Workers = Annotated[int, Field(ge=0, le=MAX_WORKERS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmSpec(Strict):
    """One SLURM job runs `processes` Dask workers; jobs are added and removed as work needs."""

    queue: Optional[str] = None  # the partition
    account: Optional[str] = None
    walltime: str = "04:00:00"
    cores: OnNode = 4  # per job
    memory: str = "16GB"  # per job
    processes: Optional[OnNode] = None  # workers per job; default: one per GPU, else one
    gpus_per_job: Gpus = 0  # `--gres=gpu:N`; each worker then carries one GPU
    job_directives: list[str] = []  # extra `#SBATCH` lines, e.g. "--constraint=a100"
    min_jobs: Workers = 0
    max_jobs: Annotated[Workers, Field(ge=1)] = 4
    local_directory: Optional[str] = None  # worker scratch space on the node, e.g. "$TMPDIR"
    log_directory: Optional[str] = None  # where job stdout/stderr go
    python: Optional[str] = None  # interpreter on the nodes; default: the one running this
    interface: Optional[str] = None  # network interface the scheduler and workers talk on, e.g. "ib0"
    tls: bool = True  # scheduler, workers and this client talk TLS, with a certificate made for the run
    tls_directory: str = "~"  # where the run's certificate and key go (0600 files in a 0700 folder): seen by every node

    @model_validator(mode="after")
    def _jobs_in_order(self) -> "SlurmSpec":
        if self.min_jobs > self.max_jobs:
            raise ValueError(f"min_jobs ({self.min_jobs}) is more than max_jobs ({self.max_jobs})")
        if self.gpus_per_job and self.processes and self.processes != self.gpus_per_job:
            raise ValueError(f"processes ({self.processes}) must equal gpus_per_job ({self.gpus_per_job}): one worker per GPU")
        if not self.tls and "tls_directory" in self.model_fields_set:
            raise ValueError("tls_directory given but tls is false")
        return self

    @property
    def workers_per_job(self) -> int:
        return self.processes or self.gpus_per_job or 1


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None


class Volume(Strict):
    """A PersistentVolumeClaim (or a node path) mounted into the scheduler and every worker."""

    mount: Path  # where it appears in the containers; cohort paths must use it
    claim: Optional[str] = None
    host_path: Optional[str] = None
    read_only: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "Volume":
        if (self.claim is None) == (self.host_path is None):
            raise ValueError("give exactly one of claim or host_path")
        return self


class KubernetesSpec(Strict):
    # The operator names the scheduler's Service "<name>-scheduler": a DNS label (a letter first, ≤ 63 characters).
    name: str = Field("cerberus-batch", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=53)
    image: str  # must contain cerberus-batch, same version as here
    namespace: str = "default"
    workers: Annotated[Workers, Field(ge=1)] = 2
    threads_per_worker: OnNode = 1
    cpu: str = "2"  # requests and limits per worker
    memory: str = "8Gi"
    gpus_per_worker: Gpus = 0  # `nvidia.com/gpu` limit; workers then carry the GPU resource
    cpu_workers: Workers = 0  # extra GPU-less workers for post-processing (needs gpus_per_worker)
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    volumes: dict[str, Volume] = {}  # e.g. {slides: {claim: slides-pvc, mount: /data/slides, read_only: true}}
    # The operator talks to the scheduler over plain tcp://, so instead of TLS a NetworkPolicy lets
    # only the cohort's pods, the run's own pod and the operator reach them.
    network_policy: bool = True

    @model_validator(mode="after")
    def _cpu_workers_need_gpus(self) -> "KubernetesSpec":
        if self.cpu_workers and not self.gpus_per_worker:
            raise ValueError("cpu_workers only makes sense with gpus_per_worker (all workers are CPU workers already)")
        return self


class AddressSpec(Strict):
    """An already running scheduler; TLS files are paths on this machine."""

    scheduler: str = Field(pattern=r"^(tcp|tls)://[^\s/]+:\d+$")
    ca_file: Optional[Path] = None
    cert: Optional[Path] = None
    key: Optional[Path] = None

    @model_validator(mode="after")
    def _tls_complete(self) -> "AddressSpec":
        given = [self.ca_file is not None, self.cert is not None, self.key is not None]
        if any(given) and not all(given):
            raise ValueError("TLS needs all three of ca_file, cert and key")
        if all(given) and not self.scheduler.startswith("tls://"):
            raise ValueError("TLS files given but the scheduler address is not tls://")
        return self


LOCAL_KEYS = ("workers", "threads_per_worker", "memory_limit")
SECTIONS = ("slurm", "kubernetes", "address")


class ClusterSpec(Strict):
    kind: Literal["local", "slurm", "kubernetes", "address"] = "local"
    workers: Optional[OnNode] = None  # CPU workers; default: one per free core (GPU workers come on top)
    threads_per_worker: OnNode = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    slurm: Optional[SlurmSpec] = None
    kubernetes: Optional[KubernetesSpec] = None
    address: Optional[AddressSpec] = None

    @model_validator(mode="after")
    def _options_match_kind(self) -> "ClusterSpec":
        if self.kind != "local":
            local = [key for key in LOCAL_KEYS if key in self.model_fields_set]
            if local:
                raise ValueError(f"{local[0]} is only for kind 'local' (kind is {self.kind!r})")
        for section in SECTIONS:
            given = getattr(self, section) is not None
            if given and section != self.kind:
                raise ValueError(f"{section} section given but kind is {self.kind!r}")
            if not given and section == self.kind:
                raise ValueError(f"kind {self.kind!r} needs a {section}: section")
        return self
