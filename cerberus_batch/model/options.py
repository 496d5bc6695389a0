"""How a predictor runs its passes: the options the cohort's `processing`/`model` sections and `tile` give every kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cerberus_batch.defaults import BATCH_SIZE, TILE
from cerberus_batch.grid import CELL


@dataclass(frozen=True)
class InferenceOptions:
    """`mode="tile"` predicts output tiles of up to `tile` px (a multiple of CELL) in one pass each;
    `mode="patch"` is the reference's 448-px patches at stride 144. A batch holds at most `batch_size`
    passes. `device` (default: CUDA when present) and `amp` ("bf16"/"fp16") say where and how passes
    compute; `memory` is the bytes the predictor may use on the CPU (default: what is free).
    Kinds that run no network (the stain baseline) ignore them.

    A wrong value is the caller's bug (ValueError): users' values are checked where they give them."""

    mode: Literal["tile", "patch"] = "tile"
    tile: int = TILE
    batch_size: int = BATCH_SIZE
    device: str | None = None
    amp: Literal["bf16", "fp16"] | None = None
    memory: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("tile", "patch"):
            raise ValueError(f"mode must be 'tile' or 'patch', got {self.mode!r}")
        if self.tile <= 0 or self.tile % CELL:
            raise ValueError(f"tile must be a positive multiple of {CELL}, got {self.tile}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or (on CUDA) 'fp16', got {self.amp!r}")
