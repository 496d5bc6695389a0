"""A weight-free stain baseline: nuclei and tissue from colour deconvolution, not Cerberus.

Nuclei are where the hematoxylin optical density (`skimage.color.rgb2hed`) is high;
tissue is where a cell absorbs light at all. Every output pixel depends only on the
input within `StainSettings.radius` pixels and all constants are fixed (no per-image
normalisation), so a region predicts the same wherever the chunk around it is cut.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from numba import njit
from scipy import ndimage as ndi
from skimage.color import rgb2hed

from cerberus_batch.grid import CELL, CONTEXT, Tile, input_boxes, tissue_runs
from cerberus_batch.model.predictor import ModelDescription, output_size

ALGORITHM = "stain-baseline-v1"


@dataclass(frozen=True)
class StainSettings:
    """Fixed constants, tuned on H&E at 0.5 µm/px (CMU-1-Small-Region)."""

    smoothing_sigma: float = 1.0  # px; evens out chromatin texture inside a nucleus
    hematoxylin_threshold: float = 0.08  # H optical density: cytoplasm ~0.05, nuclei ~0.15 on CMU-1
    hematoxylin_softness: float = 0.012  # logistic scale of the nucleus probability
    depth_levels: int = 4  # hematoxylin levels whose depths are averaged, from the threshold up
    depth_step: float = 0.02  # H optical density between depth levels
    depth_cap: int = 12  # px; distance into a nucleus is capped here, which bounds its reach
    core_window: int = 4  # px; radius searched for the deepest point around a pixel
    core_margin: float = 2.5  # px of depth below that deepest point at which inner falls to 0
    tissue_density: float = 0.25  # summed RGB optical density above which a pixel is not glass
    tissue_fraction: float = 0.1  # share of such pixels that makes a cell tissue
    tissue_softness: float = 0.02  # logistic scale of the tissue probability

    @property
    def depth_thresholds(self) -> np.ndarray:
        """The hematoxylin levels whose depths are averaged (`depth_levels` of them, `depth_step` apart)."""
        return self.hematoxylin_threshold + self.depth_step * np.arange(self.depth_levels)

    @property
    def radius(self) -> int:
        """How far (px) an output pixel looks into its input: smoothing, depth and core search."""
        return int(4 * self.smoothing_sigma + 0.5) + self.depth_cap + self.core_window + 1


def _identity(settings: StainSettings) -> str:
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()
    return f"{ALGORITHM}-{digest[:16]}"


def _logistic(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def smoothed_hematoxylin(image: np.ndarray, settings: StainSettings) -> np.ndarray:
    """The image's hematoxylin optical density, smoothed: what nuclei and their depth are found in."""
    return ndi.gaussian_filter(rgb2hed(image)[..., 0], settings.smoothing_sigma, truncate=4.0)


class StainPredictor:
    """Stain-based baseline predictor (not Cerberus): nuclei from hematoxylin, tissue from density.

    Heads: ``Nuclei-INST`` [inner, contour], ``Nuclei-TYPE`` [background, nucleus] and
    ``Patch-Class`` [background, tissue]; no gland or lumen heads.
    """

    kind = "stain"
    heads = ("Nuclei-INST", "Nuclei-TYPE", "Patch-Class")
    class_names: Mapping[str, Sequence[str]] = {
        "Nuclei-TYPE": ("background", "nucleus"),
        "Patch-Class": ("background", "tissue"),
    }

    def __init__(self, settings: StainSettings = StainSettings()) -> None:
        if settings.radius >= CONTEXT:
            raise ValueError(f"StainSettings.radius {settings.radius} px must stay below the {CONTEXT}-px context")
        self.settings = settings
        self.identity = _identity(settings)

    @classmethod
    def describe(cls, settings: StainSettings = StainSettings()) -> ModelDescription:
        """What a predictor with `settings` says of itself."""
        return ModelDescription(cls.kind, cls.heads, cls.class_names, _identity(settings))

    def predict(self, image: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every cell, `tissue` or not: the whole region costs less than cutting it."""
        height, width = output_size(image)
        s = self.settings
        hematoxylin = smoothed_hematoxylin(image, s)
        nucleus = _logistic((hematoxylin - s.hematoxylin_threshold) / s.hematoxylin_softness)
        inner = nucleus * self._core_weight(hematoxylin)
        inside = (slice(CONTEXT, CONTEXT + height), slice(CONTEXT, CONTEXT + width))
        nucleus, inner = nucleus[inside], inner[inside]
        tissue = self._tissue_probability(image[inside])
        return {
            "Nuclei-INST": np.stack([inner, nucleus - inner]),
            "Nuclei-TYPE": np.stack([1.0 - nucleus, nucleus]),
            "Patch-Class": np.stack([1.0 - tissue, tissue]),
        }

    def input_needed(self, tissue: np.ndarray) -> list[Tile]:
        """The tissue cells and `radius` px around them."""
        return input_boxes(tissue_runs(tissue), self.settings.radius)

    def _core_weight(self, hematoxylin: np.ndarray) -> np.ndarray:
        """1 at the deepest point nearby, falling to 0 core_margin px of depth below it.

        Depth is the distance to pixels below each of several hematoxylin levels, averaged,
        so it grows both away from the nucleus edge and with stain. Taking it relative to the
        deepest point nearby gives thin and round nuclei alike a core (the depth maximum),
        while the neck between two touching nuclei (narrower and paler than both centres)
        lies well below the maxima and separates their cores.
        """
        s = self.settings
        depth = mean_capped_depth(hematoxylin, s.depth_thresholds, s.depth_cap)
        disk = np.hypot(*np.mgrid[-s.core_window : s.core_window + 1, -s.core_window : s.core_window + 1]) <= s.core_window
        deepest = disk_maximum(depth, disk.sum(axis=1) // 2)  # each row of the disk: a run centred on its column
        return np.clip(1.0 - (deepest - depth) / s.core_margin, 0.0, 1.0).astype(np.float32)

    def _tissue_probability(self, region: np.ndarray) -> np.ndarray:
        """Per output cell: share of pixels denser than glass, through a logistic."""
        s = self.settings
        density = -np.log((region.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
        rows, cols = region.shape[0] // CELL, region.shape[1] // CELL
        cells = (density > s.tissue_density).reshape(rows, CELL, cols, CELL)
        return _logistic((cells.mean(axis=(1, 3)) - s.tissue_fraction) / s.tissue_softness)


@njit(cache=True)
def mean_capped_depth(hematoxylin: np.ndarray, levels: np.ndarray, cap: int) -> np.ndarray:
    """Per pixel, the mean over `levels` of its Euclidean distance (px) to the nearest pixel at or below the
    level, capped at `cap`; the pixels just outside the image count as below every level, so an
    all-nucleus image still has depths. For each level, `min(scipy.ndimage.distance_transform_edt(mask
    padded with False), cap)`, bit for bit, summed level by level and divided as `np.mean` does.

    Only distances under `cap` matter, so each pixel looks at most cap - 1 columns either side: a
    column's vertical distance (capped too) first, then the nearest of those columns. scipy's whole
    transform builds float64 and index arrays of the whole image for each level (a chunk's model spent
    60% of its time there) and streams them through memory, which slowed the other worker's tasks."""
    h, w = hematoxylin.shape
    total = np.zeros((h, w), np.float64)
    vertical = np.empty((h, w), np.int32)  # per pixel, rows to the nearest pixel below the level in its column, capped
    run = np.empty(w, np.int32)
    far = cap * cap
    for level in levels:
        run[:] = 0  # the row above the image is below every level
        for y in range(h):
            for x in range(w):
                run[x] = run[x] + 1 if hematoxylin[y, x] > level else 0
                vertical[y, x] = min(run[x], cap)
        run[:] = 0
        for y in range(h - 1, -1, -1):
            for x in range(w):
                run[x] = run[x] + 1 if hematoxylin[y, x] > level else 0
                vertical[y, x] = min(vertical[y, x], run[x])
        for y in range(h):
            for x in range(w):
                g = vertical[y, x]
                best = g * g
                for dx in range(1, cap):
                    if dx * dx >= best:
                        break
                    for column in (x - dx, x + dx):
                        # past the image's sides, a column below every level: only the horizontal distance
                        g = vertical[y, column] if 0 <= column < w else 0
                        best = min(best, dx * dx + g * g)
                total[y, x] += np.sqrt(np.float64(best)) if best < far else np.float64(cap)
    return total / np.float64(len(levels))


@njit(cache=True)
def _reflected(i: int, n: int) -> int:
    """Index i of a line of n px extended as scipy.ndimage's mode 'reflect' does (d c b a | a b c d | d c b a)."""
    i %= 2 * n
    return i if i < n else 2 * n - 1 - i


@njit(cache=True)
def disk_maximum(values: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """`scipy.ndimage.maximum_filter(values, footprint)` (mode 'reflect', its default) for a footprint of
    2r + 1 rows (r = len(half_widths) // 2) whose row j spans the columns -half_widths[j]..half_widths[j]:
    a disk. Each extended row's maxima over runs of every half width (one more px either side per width) are
    made once, in a ring of 2r + 1 rows, and each output px takes the max of its footprint's rows' runs.
    scipy visits the footprint's px one by one for each px (49 for the nuclei core's disk), 8% of the
    stain model's time."""
    h, w = values.shape
    r, widest = len(half_widths) // 2, half_widths.max()
    columns = np.array([_reflected(x, w) for x in range(-widest, w + widest)])  # extended column -> px
    runs = np.empty((2 * r + 1, widest + 1, w), values.dtype)  # ring: extended row -> its maxima per half width
    out = np.empty((h, w), values.dtype)
    for row in range(-r, h + r):
        ring, source = (row + r) % (2 * r + 1), values[_reflected(row, h)]
        for x in range(w):
            runs[ring, 0, x] = source[x]
        for k in range(1, widest + 1):
            for x in range(w):
                runs[ring, k, x] = max(runs[ring, k - 1, x], source[columns[x + widest - k]], source[columns[x + widest + k]])
        y = row - r  # the output row whose footprint this row completes
        if y < 0:
            continue
        for x in range(w):
            out[y, x] = runs[y % (2 * r + 1), half_widths[0], x]  # footprint row j is extended row y - r + j
        for j in range(1, 2 * r + 1):
            ring = (y + j) % (2 * r + 1)
            for x in range(w):
                out[y, x] = max(out[y, x], runs[ring, half_widths[j], x])
    return out
