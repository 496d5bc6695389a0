"""How probability maps are stored, read by inference (writing them), post-processing (reading them)
and storage alike.

Probabilities are stored as uint8 q = round(p * 255) (round half to even) unless
float16 is asked for; they read back as q / 255. A stored 128 reads 0.502, so
"p > 0.5" becomes "q >= 128": quantisation moves the decision only for
p in (0.498, 0.502), i.e. by less than half a step (1/510) around the threshold.
Class maps are stored as uint8 class indices.
"""

from __future__ import annotations

import numba
import numpy as np

CLASS_DTYPE = "uint8"  # a class map's stored type


def quantise(prob: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Probabilities in [0, 1] to their stored form."""
    if dtype == "float16":
        return prob.astype(np.float16)
    return _quantise_uint8(prob.reshape(-1)).reshape(prob.shape)


@numba.njit(cache=True, nogil=True, inline="always")
def quantised(p):
    """One probability's uint8 code: rint(clip(p, 0, 1) * 255) in p's own float type, NaN as 0.

    The constants are float32 so a float32 p is never widened: float64 would round some ties differently."""
    if not p >= 0:  # also NaN
        return np.uint8(0)
    return np.uint8(np.rint(min(p, np.float32(1)) * np.float32(255)))


@numba.njit(cache=True, nogil=True)
def _quantise_uint8(flat: np.ndarray) -> np.ndarray:
    """One pass instead of numpy's four (clip, scale, round, cast: each a full temporary)."""
    out = np.empty(flat.size, np.uint8)
    for i in range(flat.size):
        out[i] = quantised(flat[i])
    return out


def dequantise(stored: np.ndarray) -> np.ndarray:
    """Stored probabilities back to float32 in [0, 1]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)
