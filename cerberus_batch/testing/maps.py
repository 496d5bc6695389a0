"""Realistic synthetic probability maps for tests and benchmarks.

Nuclei are blurred discs with a contour ring, many touching, some centred on
chunk corners; glands are large blobs (some bigger than a chunk) with lumens
inside, plus stray lumens outside any gland; smooth noise adds ragged edges and specks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cerberus_batch.grid import CELL
from cerberus_batch.quantisation import quantise


def blob_field(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest centre in units of its radius, and which centre is nearest."""
    seeds = np.ones(shape, bool)
    seeds[centres[:, 0], centres[:, 1]] = False
    distance, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    which = np.zeros(shape, np.int64)
    which[centres[:, 0], centres[:, 1]] = np.arange(len(centres))
    nearest = which[iy, ix]
    return distance / radii[nearest], nearest


def ring_probs(field: np.ndarray, noise: np.ndarray, edge: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    inner = 1 / (1 + np.exp(-12 * (edge - field + 0.25 * noise)))
    contour = np.exp(-(((field - 1) / 0.18) ** 2)) * (0.6 + 0.4 * noise)
    return inner, np.clip(contour, 0, 1)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-12)


def synthetic_maps(height: int, width: int, *, seed: int = 0, corners_every: int = 432) -> dict[str, np.ndarray]:
    """Stored-form (uint8) maps of one slide of height × width processing px (multiples of 144)."""
    rng = np.random.default_rng(seed)
    count = height * width // 500
    centres = np.column_stack([rng.integers(0, height, count), rng.integers(0, width, count)])
    corners = np.array([(y, x) for y in range(corners_every, height, corners_every)
                        for x in range(corners_every, width, corners_every)], np.int64).reshape(-1, 2)
    centres = np.unique(np.concatenate([centres, corners, corners - 1]), axis=0)
    radii = rng.uniform(2.5, 7.0, len(centres))
    field, nearest = blob_field((height, width), centres, radii)
    inner, contour = ring_probs(field, smooth_noise(rng, (height, width), 1.5))
    nuclei_class = rng.integers(0, 7, len(centres))[nearest]

    half = (height // 2, width // 2)
    glands = max(3, half[0] * half[1] // 40000)
    gland_centres = np.column_stack([rng.integers(0, half[0], glands), rng.integers(0, half[1], glands)])
    gland_radii = rng.uniform(20, 70, glands)
    gland_centres[0] = (half[0] // 2, half[1] // 2)
    gland_radii[0] = max(gland_radii[0], 0.3 * min(half))  # bigger than a chunk
    gland_field, nearest = blob_field(half, gland_centres, gland_radii)
    gland_noise = smooth_noise(rng, half, 4.0)
    g_inner, g_contour = ring_probs(gland_field, gland_noise)
    gland_class = rng.integers(1, 3, glands)[nearest]
    gland_class[(gland_field > 1.1) | (smooth_noise(rng, half, 3.0) > 1.5)] = 0
    stray = np.column_stack([rng.integers(0, half[0], glands), rng.integers(0, half[1], glands)])
    lumen_field, _ = blob_field(half, np.concatenate([gland_centres, stray]),
                             np.concatenate([gland_radii * rng.uniform(0.2, 0.5, glands), rng.uniform(5, 12, glands)]))
    l_inner, l_contour = ring_probs(lumen_field, smooth_noise(rng, half, 2.0), edge=0.8)

    tissue = rng.integers(0, 9, (height // CELL // 2 + 1, width // CELL // 2 + 1))
    tissue_class = np.kron(tissue, np.ones((2, 2), np.int64))[: height // CELL, : width // CELL]
    return {
        "nuclei_prob": quantise(np.stack([inner, contour])),
        "nuclei_class": nuclei_class.astype(np.uint8),
        "gland_prob": quantise(np.stack([g_inner, g_contour])),
        "gland_class": gland_class.astype(np.uint8),
        "lumen_prob": quantise(np.stack([l_inner, l_contour])),
        "tissue_class": tissue_class.astype(np.uint8),
    }
