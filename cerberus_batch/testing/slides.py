"""Synthetic H&E-like slides with known ground truth, written as Aperio-style SVS files.

Used by the tests and to generate the bundled demo cohort. A slide holds pink
stroma with scattered nuclei, glands (a ring of epithelium with nuclei around a
pale lumen, one of them wider than 2,000 level-0 px so it crosses chunk
borders) and about 30% blank glass. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

from cerberus_batch.testing.svs import THUMBNAIL_SIZE, Encoding, write_svs

MPP = 0.25  # level-0 µm/px, a 40x scan
JPEG_QUALITY = 90
DOWNSAMPLES = (1, 4, 16)
GLASS_FRACTION = 0.42  # before glands claim stroma around them; about 0.3 remains

# Classes of the rendered image, and their base RGB colours.
GLASS, STROMA, EPITHELIUM, LUMEN, NUCLEUS = range(5)
PALETTE = np.array(
    [(243, 242, 245), (234, 164, 200), (206, 140, 192), (247, 236, 244), (78, 42, 116)],
    dtype=np.int16,
)
NUCLEUS_RADII = (12, 24)  # level-0 px: 6-12 µm diameters at 0.25 µm/px
STROMA_NUCLEUS_SPACING = 110  # level-0 px between stroma nuclei on average
TOUCHING_FRACTION = 0.015  # of placements: a nucleus set against an existing one


@dataclass
class SyntheticSlide:
    path: Path
    image: np.ndarray  # level-0 RGB ground truth (h, w, 3) uint8, before JPEG
    nuclei: np.ndarray  # int32 (h, w) labels, 0 = none
    glands: np.ndarray  # int32 (h, w) labels; a gland includes its lumen
    lumens: np.ndarray  # int32 (h, w) labels; lumen i lies inside gland i
    centres: list[tuple[float, float]]  # nucleus i+1 centre (x, y), level-0 px, pixel (i, j) spans [i, i+1)
    mpp: float = MPP


@dataclass(frozen=True)
class _Ellipse:
    cx: float  # pixel-index coordinates, as skimage.draw uses
    cy: float
    rx: float
    ry: float
    angle: float  # radians, skimage.draw's rotation

    def normalised_radius(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """1 on the boundary, < 1 inside."""
        dx, dy = xs - self.cx, ys - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = dx * s + dy * c, dx * c - dy * s  # skimage.draw's convention: r along rows rotated by angle
        return np.sqrt((u / self.ry) ** 2 + (v / self.rx) ** 2)


def make_synthetic_slide(path: str | Path, size: tuple[int, int] = (6000, 5000), seed: int = 0) -> SyntheticSlide:
    """Render a synthetic slide of `size` (w, h) level-0 px and write it to `path` as SVS."""
    w, h = size
    rng = np.random.default_rng(seed)
    classes = np.where(_tissue_region(rng, w, h), STROMA, GLASS).astype(np.uint8)
    glands = np.zeros((h, w), np.int32)
    lumens = np.zeros((h, w), np.int32)
    nuclei = np.zeros((h, w), np.int32)
    shapes: list[_Ellipse] = []
    for gland_id, gland in enumerate(_place_glands(rng, w, h), start=1):
        shapes += _draw_gland(rng, gland, gland_id, classes, glands, lumens)
    shapes += _stroma_nuclei(rng, classes, glands, shapes)
    centres = []
    for label, shape in enumerate(shapes, start=1):
        rows, cols = ellipse(shape.cy, shape.cx, shape.ry, shape.rx, shape=(h, w), rotation=shape.angle)
        free = nuclei[rows, cols] == 0  # a touching neighbour keeps its pixels
        rows, cols = rows[free], cols[free]
        nuclei[rows, cols] = label
        classes[rows, cols] = NUCLEUS
        centres.append((shape.cx + 0.5, shape.cy + 0.5))
    image = _render(rng, classes)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_svs(Path(path), image)
    return SyntheticSlide(Path(path), image, nuclei, glands, lumens, centres)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, step: int) -> np.ndarray:
    """Float32 (h, w) noise with features about `step` px across, zero mean, unit-ish amplitude."""
    coarse = rng.standard_normal((h // step + 3, w // step + 3)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 1.0)
    coarse /= coarse.std() + 1e-6
    fine = ndimage.zoom(coarse, step, order=1, output=np.float32, grid_mode=True, mode="nearest")
    return fine[:h, :w]


def _tissue_region(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    field = _smooth_noise(rng, w, h, step=256)
    return field > np.quantile(field[::16, ::16], GLASS_FRACTION)


def _place_glands(rng: np.random.Generator, w: int, h: int) -> list[_Ellipse]:
    """One gland wider than 2,000 level-0 px, then smaller ones where they fit."""
    largest = 0.4 * min(w, h)  # small test slides get proportionally smaller glands
    sizes = [rng.uniform(1100, 1250)] + list(rng.uniform(250, 550, size=max(1, w * h // 5_000_000)))
    wanted = [min(size, largest) for size in sizes]
    placed: list[_Ellipse] = []
    for radius in wanted:
        for _ in range(200):
            rx, ry = radius, radius * rng.uniform(0.75, 0.95)
            cx, cy = rng.uniform(rx + 50, w - rx - 50), rng.uniform(ry + 50, h - ry - 50)
            if all(math.hypot(cx - g.cx, cy - g.cy) > rx + g.rx + 150 for g in placed):
                placed.append(_Ellipse(cx, cy, rx, ry, rng.uniform(0, math.pi)))
                break
    return placed


def _draw_gland(
    rng: np.random.Generator, gland: _Ellipse, label: int, classes: np.ndarray, glands: np.ndarray, lumens: np.ndarray
) -> list[_Ellipse]:
    """Paint a gland (epithelium ring around a lumen) and return the nuclei lining it."""
    h, w = classes.shape
    thickness = rng.uniform(90, 130)  # 22-33 µm of columnar epithelium
    pad = 200  # stroma kept around the gland so it never sits on glass
    y0, y1 = max(0, int(gland.cy - gland.rx - pad)), min(h, int(gland.cy + gland.rx + pad) + 1)
    x0, x1 = max(0, int(gland.cx - gland.rx - pad)), min(w, int(gland.cx + gland.rx + pad) + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rho = gland.normalised_radius(xs, ys)
    lumen_rho = 1 - thickness / min(gland.rx, gland.ry)
    box = classes[y0:y1, x0:x1]
    box[(rho <= 1 + pad / gland.rx) & (box == GLASS)] = STROMA
    box[rho <= 1] = EPITHELIUM
    box[rho <= lumen_rho] = LUMEN
    glands[y0:y1, x0:x1][rho <= 1] = label
    lumens[y0:y1, x0:x1][rho <= lumen_rho] = label
    # Nuclei sit near the basement membrane, long axis pointing at the lumen.
    ring = 1 - 0.4 * thickness / min(gland.rx, gland.ry)
    perimeter = math.pi * (gland.rx + gland.ry) * ring
    count = int(perimeter / rng.uniform(52, 60))
    out = []
    for theta in np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(0, 2 * math.pi):
        u, v = gland.ry * ring * math.sin(theta), gland.rx * ring * math.cos(theta)
        c, s = math.cos(gland.angle), math.sin(gland.angle)
        cx, cy = gland.cx + u * s + v * c, gland.cy + u * c - v * s
        radial = math.atan2(cy - gland.cy, cx - gland.cx)
        long, short = rng.uniform(18, 23), rng.uniform(12, 15)
        # skimage.draw rotation turns the row axis by `angle` from +y; align the long (row) axis radially.
        out.append(_Ellipse(cx, cy, short, long, math.pi / 2 - radial))
    return out


def _stroma_nuclei(
    rng: np.random.Generator, classes: np.ndarray, glands: np.ndarray, existing: list[_Ellipse]
) -> list[_Ellipse]:
    """Nuclei scattered through the stroma, apart from each other except a few touching pairs."""
    h, w = classes.shape
    bucket = 64
    grid: dict[tuple[int, int], list[_Ellipse]] = {}
    for shape in existing:
        grid.setdefault((int(shape.cy) // bucket, int(shape.cx) // bucket), []).append(shape)
    wanted = int((classes == STROMA)[::8, ::8].sum() * 64 / STROMA_NUCLEUS_SPACING**2)
    candidates = rng.uniform((40, 40), (w - 40, h - 40), size=(wanted * 4, 2))
    out: list[_Ellipse] = []
    for cx, cy in candidates:
        if len(out) == wanted:
            break
        partner = out[rng.integers(len(out))] if out and rng.random() < TOUCHING_FRACTION else None
        if partner:
            shape = _beside(rng, partner)
        else:
            long = rng.uniform(*NUCLEUS_RADII)
            shape = _Ellipse(cx, cy, rng.uniform(NUCLEUS_RADII[0], long), long, rng.uniform(0, math.pi))
        row, col = int(shape.cy), int(shape.cx)
        if not (40 <= col < w - 40 and 40 <= row < h - 40) or classes[row, col] != STROMA or glands[row, col]:
            continue
        near = [
            other
            for dy in (-2, -1, 0, 1, 2)
            for dx in (-2, -1, 0, 1, 2)
            for other in grid.get((row // bucket + dy, col // bucket + dx), [])
            if other is not partner
        ]
        if all(math.hypot(shape.cx - o.cx, shape.cy - o.cy) > max(shape.rx, shape.ry) + max(o.rx, o.ry) + 6 for o in near):
            out.append(shape)
            grid.setdefault((row // bucket, col // bucket), []).append(shape)
    return out


def _beside(rng: np.random.Generator, partner: _Ellipse) -> _Ellipse:
    """A round nucleus just touching `partner` on a random side."""
    radius = rng.uniform(*NUCLEUS_RADII)
    theta = rng.uniform(0, 2 * math.pi)
    # Partner's radius towards theta; its row (ry) axis points along (sin angle, cos angle) in (x, y).
    phi = theta - math.atan2(math.cos(partner.angle), math.sin(partner.angle))
    reach = partner.rx * partner.ry / math.hypot(partner.rx * math.cos(phi), partner.ry * math.sin(phi))
    distance = reach + radius + 0.5
    return _Ellipse(partner.cx + distance * math.cos(theta), partner.cy + distance * math.sin(theta), radius, radius, 0.0)


def _render(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """Colour the class map: palette, smooth staining variation, fibre texture and sensor noise."""
    h, w = classes.shape
    shading = _smooth_noise(rng, w, h, step=16) * 10  # staining and fibre texture, ±10 levels
    stained = (classes != GLASS) & (classes != LUMEN)
    image = PALETTE[classes]
    image += (shading * stained).astype(np.int16)[..., None]
    image += rng.integers(-3, 4, size=(h, w, 1), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _write_svs(path: Path, image: np.ndarray) -> None:
    """The slide, its box-averaged reduced levels and a nearest-pixel thumbnail, in the SVS layout."""
    h, w = image.shape[:2]
    levels, level = [(image, (w, h))], image
    for finer, factor in zip(DOWNSAMPLES, DOWNSAMPLES[1:]):
        level = _box_downsample(level, factor // finer)
        levels.append((level, (level.shape[1], level.shape[0])))
    step = math.ceil(max(w, h) / THUMBNAIL_SIZE)
    write_svs(path, levels, image[::step, ::step], MPP, {"AppMag": 40, "StripeWidth": 2032, "ScanScope ID": "SYNTHETIC"},
              Encoding("jpeg", JPEG_QUALITY, None))
