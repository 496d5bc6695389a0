"""How probability maps are stored, read by inference (writing them), post-processing (reading them)
and storage alike.

Probabilities are stored as uint8 q = round(p * 255) (round half to even) unless
float16 is asked for; they read back as q / 255. A stored 128 reads 0.502, so
"p > 0.5" becomes "q >= 128": quantisation moves the decision only for
p in (0.498, 0.502), i.e. by less than half a step (1/510) around the threshold.
Class maps are stored as uint8 class indices.
"""

from __future__ import annotations

import numpy as np

CLASS_DTYPE = "uint8"  # a class map's stored type


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
