"""The one place a predictor is made, for `run` (from the cohort file) and `tile` (from its options)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

from cerberus_batch.defaults import BATCH_SIZE, TILE
from cerberus_batch.model.predictor import Predictor


def build_predictor(
    kind: Literal["cerberus", "stain"],
    weights: str | Path | None = None,
    *,
    heads: Iterable[str] | None = None,
    mode: Literal["tile", "patch"] = "tile",
    tile: int = TILE,
    batch_size: int = BATCH_SIZE,
    device: str | None = None,
    amp: Literal["bf16", "fp16"] | None = None,
    memory: float | None = None,
) -> Predictor:
    """A model of `kind`; Cerberus loads `weights` (the official folder) and honours the other options
    (`memory`: the bytes its batches may use on the CPU, default what is free)."""
    if kind == "stain":
        from cerberus_batch.model.stain import StainPredictor

        return StainPredictor()
    from cerberus_batch.model.cerberus import CerberusPredictor

    return CerberusPredictor(weights, heads=heads, mode=mode, tile=tile, batch_size=batch_size, device=device, amp=amp, memory=memory)
