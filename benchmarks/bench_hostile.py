"""Hostile inputs cost what they are worth: peak RSS and seconds of `validate` / `inspect` on them.

    python benchmarks/bench_hostile.py

Each command runs in a fresh process (tests/test_hostile_inputs.py's launcher reads its own peak RSS):
a 1-bit PNG mask of 44,400 × 59,340 px (a few hundred KB) beside a 2,220 × 2,967 px slide (refused from
its header) and as the level-0 mask of a slide that size (decoded in bands, reduced), and a 1.2 MB TIFF
whose levels claim 200,000² px (refused at open).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the hostile files' writers and the measuring launcher

from test_hostile_inputs import (  # noqa: E402
    BOMB, GB, HUGE_MPP, SMALL_SLIDE, run_cli, write_bitmap_png, write_cohort, write_tiled_tiff,
)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        inputs = tmp / "inputs"
        inputs.mkdir()
        bomb, small, big, huge = (inputs / name for name in ("bomb.png", "small.tif", "big.tif", "huge.tif"))
        write_bitmap_png(bomb, BOMB)
        write_tiled_tiff(small, SMALL_SLIDE, shared=False)
        write_tiled_tiff(big, BOMB, shared=False)
        write_tiled_tiff(huge, (200_000, 200_000), shared=True)
        cases = {
            f"validate: {bomb.stat().st_size / 1e3:.0f} KB PNG mask of {BOMB[0]}x{BOMB[1]} px, slide {SMALL_SLIDE[0]}x{SMALL_SLIDE[1]}":
                ("validate", write_cohort(_folder(tmp, "a"), small, bomb)),
            f"validate: the same PNG as the level-0 mask of a {BOMB[0]}x{BOMB[1]} px slide":
                ("validate", write_cohort(_folder(tmp, "b"), big, bomb)),
            f"validate: {huge.stat().st_size / 1e6:.1f} MB TIFF claiming 200000x200000 px":
                ("validate", write_cohort(_folder(tmp, "c"), huge, mpp=HUGE_MPP)),
        }
        for name, (command, cohort) in cases.items():
            _report(name, run_cli(command, str(cohort), cwd=cohort.parent))
        _report("inspect: the same TIFF", run_cli("inspect", str(huge), "--mpp-override", str(HUGE_MPP), cwd=tmp))


def _folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def _report(name: str, result) -> None:
    verdict = "refused" if result.code == 1 else f"exit {result.code}"
    print(f"{name}: {verdict}, peak RSS {result.peak_rss / GB:.2f} GB, {result.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
