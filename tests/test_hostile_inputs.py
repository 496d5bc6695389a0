"""Hostile inputs cost what they are worth: a mask or slide that declares billions of pixels in a
small file is decoded reduced, in bands, or refused in one line, within seconds and well under 1 GB.

The CLI runs in a fresh subprocess so its own peak RSS can be read (os.wait4); an address-space cap
far above the bound makes a regression fail quickly instead of exhausting the machine.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cerberus_batch.slides import mask as mask_module
from cerberus_batch.slides import SlideError, open_slide, tissue_mask
from helpers import write_cohort

GB = 1 << 30
PEAK_RSS_BOUND = 1 * GB  # generous: validate alone peaks near 500 MB, decoding the bomb in bands adds ~100 MB
SECONDS_BOUND = 30  # generous: the fixed paths take a few seconds
ADDRESS_SPACE_CAP = 4 * GB

# The bomb: a 1-bit PNG of 44400 × 59340 px, 20x CMU-1-Small-Region's 2220 × 2967 each way.
BOMB = (44400, 59340)
SMALL_SLIDE = (2220, 2967)

CLI = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_CAP}, {ADDRESS_SPACE_CAP}))
from cerberus_batch.cli import main
main(prog_name="cerberus-batch")
"""
# Linux counts a process's memory before exec into its peak RSS, so the CLI is started by a small
# launcher rather than by this (large) test process: argv is the RSS file, the timeout and the CLI's args.
LAUNCHER = f"""
import os, subprocess, sys, threading
child = subprocess.Popen([sys.executable, "-c", {CLI!r}, *sys.argv[3:]])
threading.Timer(float(sys.argv[2]), child.kill).start()
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
open(sys.argv[1], "w").write(str(usage.ru_maxrss * 1024))
os._exit(child.returncode % 256)  # without waiting for the timer
"""


@dataclass
class Measured:
    code: int
    output: str
    peak_rss: int  # bytes
    seconds: float


def run_cli(*args: str, cwd: Path, timeout: float = SECONDS_BOUND) -> Measured:
    """`cerberus-batch ARGS` in a fresh process, killed after `timeout` s; its exit code, output, peak RSS and time."""
    env = os.environ | {"COLUMNS": "200"}  # no wrapping in rich's tables
    with tempfile.NamedTemporaryFile() as rss:
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, rss.name, str(timeout), *args],
            capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout + 60,
        )
        seconds = time.monotonic() - start
        peak_rss = int(Path(rss.name).read_text())
    return Measured(done.returncode, done.stdout + done.stderr, peak_rss, seconds)


def write_bitmap_png(path: Path, size: tuple[int, int]) -> None:
    """A 1-bit PNG, black with a white middle third, written row pattern by row pattern (never whole in memory)."""
    w, h = size
    row_bytes = (w + 7) // 8
    blank = b"\0" * (1 + row_bytes)  # filter byte 0, then the packed row
    inked = b"\0" * (1 + row_bytes // 3) + b"\xff" * (row_bytes // 3) + b"\0" * (row_bytes - 2 * (row_bytes // 3))
    compress = zlib.compressobj(9)
    idat = []
    for row, count in ((blank, h // 3), (inked, h // 3), (blank, h - 2 * (h // 3))):
        for start in range(0, count, 1000):
            idat.append(compress.compress(row * min(1000, count - start)))
    idat.append(compress.flush())
    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    write_png(path, header, b"".join(idat))


def write_png(path: Path, header: bytes, compressed: bytes) -> None:
    chunks = ((b"IHDR", header), (b"IDAT", compressed), (b"IEND", b""))
    body = b"".join(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def write_tiled_tiff(path: Path, size: tuple[int, int], *, shared: bool, tile: int = 512) -> None:
    """An RGB tiled TIFF of `size` (w, h) px whose tiles are all one pink deflated tile: stored once
    (`shared`, every tile offset on it, as the issue's 1.2 MB 200000² file) or once per tile."""
    w, h = size
    count = -(-w // tile) * -(-h // tile)
    pixels = np.broadcast_to(np.array([220, 150, 200], np.uint8), (tile, tile, 3))
    data = zlib.compress(pixels.tobytes(), 9)
    tags = [  # (tag, type, count, value or offset); types: 3 SHORT, 4 LONG
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 8), (262, 3, 1, 2),
        (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, count, None), (325, 4, count, None),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    bits_at = 8 + ifd_size
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * count
    data_at = counts_at + 4 * count
    entries = b""
    for tag, kind, n, value in tags:
        value = {258: bits_at, 324: offsets_at, 325: counts_at}.get(tag, value)
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and n == 1 else struct.pack("<I", value)
        entries += struct.pack("<HHI", tag, kind, n) + packed
    step = 0 if shared else len(data)
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0")
        f.write(struct.pack("<3H", 8, 8, 8))
        f.write((data_at + step * np.arange(count)).astype("<u4").tobytes())
        f.write(np.full(count, len(data), "<u4").tobytes())
        f.write(data if shared else data * count)


def slides_folder(tmp_path: Path) -> Path:
    """Slides apart from the cohort's output folder."""
    folder = tmp_path / "slides"
    folder.mkdir()
    return folder


def one_slide_cohort(folder: Path, slide: Path, mask: Path | None = None, mpp: float = 0.5) -> Path:
    entry = {"path": str(slide), "mpp": mpp} | ({"mask": str(mask)} if mask else {})
    return write_cohort(folder, [entry], processing={"chunk": 1008})


def assert_refused_in_one_line(result: Measured, *names: Path) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith(("PROBLEM", "Error"))]
    assert result.code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def assert_cheap(result: Measured) -> None:
    assert result.peak_rss < PEAK_RSS_BOUND, f"peak RSS {result.peak_rss / GB:.2f} GB\n{result.output}"
    assert result.seconds < SECONDS_BOUND, f"{result.seconds:.0f} s\n{result.output}"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    write_bitmap_png(path, BOMB)
    assert path.stat().st_size < 1_000_000
    return path


def test_mask_bomb_finer_than_the_slide_is_refused(tmp_path, bomb):
    slide = slides_folder(tmp_path) / "small.tif"
    write_tiled_tiff(slide, SMALL_SLIDE, shared=False)
    result = run_cli("validate", str(one_slide_cohort(tmp_path, slide, bomb)), cwd=tmp_path)
    line = assert_refused_in_one_line(result, bomb)
    assert "44400x59340" in line
    assert_cheap(result)


def test_level0_sized_mask_bomb_is_decoded_reduced(tmp_path, bomb):
    slide = slides_folder(tmp_path) / "big.tif"  # a mostly blank slide really 44400 × 59340 px: a legitimate level-0 mask
    write_tiled_tiff(slide, BOMB, shared=False)
    result = run_cli("validate", str(one_slide_cohort(tmp_path, slide, bomb)), cwd=tmp_path)
    assert result.code == 0, result.output
    assert "44400×59340" in result.output
    assert_cheap(result)


HUGE_MPP = 0.25  # 200000 px are then 50 mm: a slide's length, so only the file's size gives it away


@pytest.fixture(scope="module")
def claimed_huge(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.tif"
    write_tiled_tiff(path, (200_000, 200_000), shared=True)
    assert path.stat().st_size < 1_300_000
    return path


def test_tiff_claiming_200000_px_square_is_refused_by_validate(tmp_path, claimed_huge):
    result = run_cli("validate", str(one_slide_cohort(tmp_path, claimed_huge, mpp=HUGE_MPP)), cwd=tmp_path)
    assert "file size" in assert_refused_in_one_line(result, claimed_huge)
    assert_cheap(result)


def test_tiff_claiming_200000_px_square_is_refused_by_inspect(tmp_path, claimed_huge):
    result = run_cli("inspect", str(claimed_huge), "--mpp-override", str(HUGE_MPP), cwd=tmp_path)
    assert "file size" in assert_refused_in_one_line(result, claimed_huge)
    assert_cheap(result)


def test_openslide_refuses_a_slide_too_small_for_its_pixels_by_the_same_rule(tmp_path, claimed_huge):
    result = run_cli("inspect", str(claimed_huge), "--mpp-override", str(HUGE_MPP), "--reader", "openslide", cwd=tmp_path)
    assert "file size" in assert_refused_in_one_line(result, claimed_huge)
    assert_cheap(result)


def test_automatic_mask_of_a_slide_without_low_levels_is_refused(tmp_path):
    slide = tmp_path / "flat.tif"  # 6.4 Gpx and one level: the automatic mask would read all of it
    write_tiled_tiff(slide, (80_000, 80_000), shared=False)
    result = run_cli("inspect", str(slide), "--mpp-override", "0.5", cwd=tmp_path)
    assert "automatic mask" in assert_refused_in_one_line(result, slide)
    assert_cheap(result)
    # A given mask needs no read of the slide's pixels.
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(mask)
    assert run_cli("inspect", str(slide), "--mpp-override", "0.5", "--mask", str(mask), cwd=tmp_path).code == 0


# --- Banded PNG decoding gives what Pillow's whole decode gives, for every PNG layout -------------

def png_variants(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    shape = (203, 157)  # odd sizes: partial bytes of packed rows, partial blocks when reduced
    noise = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    noise[rng.random(shape) < 0.6] = 0  # zeros beside nonzero values; Pillow's adaptive filters pick all five types
    images = {
        "bits": Image.fromarray(noise[..., 0] > 128),
        "grey": Image.fromarray(noise[..., 0]),
        "grey-alpha": Image.fromarray(noise[..., :2], "LA"),
        "rgb": Image.fromarray(noise[..., :3]),
        "rgba": Image.fromarray(noise),
        "palette": Image.fromarray(noise[..., 0] % 16),  # "P" once it has a palette
        "grey16": Image.fromarray(noise[..., 0].astype(np.uint16) * 3),
    }
    palette = rng.integers(0, 256, 48, dtype=np.uint8)
    palette[:6] = 0  # indices 0 and 1 are black: not tissue
    images["palette"].putpalette(palette.tolist())
    paths = []
    for name, image in images.items():
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1], bits=4) if name == "palette" else image.save(paths[-1])
    return paths


def pillow_tissue(path: Path) -> np.ndarray:
    """Tissue as the mask reader defines it: any nonzero colour channel, alpha ignored."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert({"P": "RGB", "LA": "L", "RGBA": "RGB"}.get(image.mode, image.mode)))
    return pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0


def block_any(array: np.ndarray, k: int) -> np.ndarray:
    h, w = array.shape
    padded = np.zeros((-(-h // k) * k, -(-w // k) * k), bool)
    padded[:h, :w] = array
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).any(axis=(1, 3))


@pytest.mark.parametrize("budget", [None, 2_100])  # whole, and reduced 4x (51 x 40 px fit 2100, 68 x 53 do not)
def test_banded_png_decoding_matches_pillow(tmp_path, monkeypatch, budget):
    slide = tmp_path / "slide.png"
    Image.fromarray(np.full((203, 157, 3), 230, np.uint8)).save(slide)
    monkeypatch.setattr(mask_module, "BAND_PIXELS", 500)  # a few rows per band: many band seams
    if budget:
        monkeypatch.setattr(mask_module, "MASK_PIXELS", budget)
    with open_slide(slide, mpp=0.5) as opened:
        view = opened.at_mpp(0.5)
        for path in png_variants(tmp_path):
            found = tissue_mask(view, path)
            k = 4 if budget else 1
            np.testing.assert_array_equal(found.array, block_any(pillow_tissue(path), k), err_msg=path.name)
            assert (found.downsample, found.downsample_x) == (k * 1.0, k * 1.0)


def write_interlaced_white_png(path: Path, size: tuple[int, int]) -> None:
    """An 8-bit grey Adam7-interlaced PNG, all white (Pillow writes no interlaced PNGs)."""
    w, h = size
    rows = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        pass_w, pass_h = -(-(w - x0) // dx), -(-(h - y0) // dy)
        rows += (b"\0" + b"\xff" * pass_w) * pass_h if pass_w > 0 else b""
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 1)
    write_png(path, header, zlib.compress(rows))


@pytest.mark.parametrize("name", ["interlaced.png", "mask.tif"])
def test_masks_decoded_whole_are_refused_over_the_budget(tmp_path, monkeypatch, name):
    slide = tmp_path / "slide.png"
    Image.fromarray(np.full((300, 400, 3), 230, np.uint8)).save(slide)
    mask = tmp_path / name
    if name.endswith(".png"):
        write_interlaced_white_png(mask, (400, 300))
    else:
        Image.fromarray(np.full((300, 400), 255, np.uint8)).save(mask)
    with open_slide(slide, mpp=0.5) as opened:
        view = opened.at_mpp(0.5)
        assert tissue_mask(view, mask).array.all()  # within the budget: decoded whole
        monkeypatch.setattr(mask_module, "MASK_PIXELS", 100_000)
        with pytest.raises(SlideError) as err:
            tissue_mask(view, mask)
    assert str(err.value).startswith(f"{mask}: ") and "\n" not in str(err.value)
    assert "over 0 Mpx" not in str(err.value)
