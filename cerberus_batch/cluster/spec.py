"""The `cluster:` section of a cohort file."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, PositiveInt


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterSpec(Strict):
    kind: Literal["local", "slurm", "kubernetes", "address"] = "local"
    workers: Optional[PositiveInt] = None  # default: one per 2 cores (CPU) / one per GPU
    threads_per_worker: PositiveInt = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
