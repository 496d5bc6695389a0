"""What the probability maps of one slide are, independent of where they live.

Every map is an array laid on the processing-resolution output grid (padded up to
whole 144-px cells). Pixel maps are channel-first (c, y, x), as OME-NGFF expects.

Probabilities are stored as uint8 q = round(p * 255) (round half to even) unless
float16 is asked for; they read back as q / 255. A stored 128 reads 0.502, so
"p > 0.5" becomes "q >= 128": quantisation moves the decision only for
p in (0.498, 0.502), i.e. by less than half a step (1/510) around the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from cerberus_batch.vocabulary import HEAD_MAPS, PER_CLASS


@dataclass(frozen=True)
class MapSpec:
    """One stored map: its name, channels, and how coarse it is relative to processing pixels."""

    name: str
    channels: int | None  # None for a single 2-D map (class indices)
    downsample: int  # processing px per map px
    probability: bool  # quantised probability (True) or class index (False)

    def bytes_per_px(self, dtype: str) -> float:
        """Stored bytes per processing px (before compression), probabilities as `dtype`, class indices as uint8."""
        return (self.channels or 1) * (np.dtype(dtype).itemsize if self.probability else 1) / self.downsample**2


def map_specs(heads: Iterable[str], class_names: Mapping[str, Sequence[str]]) -> list[MapSpec]:
    """The maps a slide group holds for the model heads that ran, in the vocabulary's order."""
    ran = set(heads)
    return [
        MapSpec(
            stored.name, len(class_names[head]) if stored.channels == PER_CLASS else stored.channels,
            stored.downsample, stored.form == "prob",
        )
        for head, maps in HEAD_MAPS.items() if head in ran
        for stored in maps
    ]


def quantise(prob: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Probabilities in [0, 1] to their stored form."""
    if dtype == "float16":
        return prob.astype(np.float16)
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def dequantise(stored: np.ndarray) -> np.ndarray:
    """Stored probabilities back to float32 in [0, 1]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)
