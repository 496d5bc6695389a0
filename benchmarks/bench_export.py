"""SpatialData export cost vs slide size: seconds and peak RSS of `cerberus-batch export --format spatialdata`.

    python benchmarks/bench_export.py [--small 20] [--big 80] [--workdir DIR]
    python benchmarks/bench_export.py --small 5 --big 20 --workdir /tmp/bench-export   # about 12 minutes on 2 shared cores

Makes bench_scale's two mosaics of CMU-1-Small-Region (`cerberus_batch.testing.mosaic`; the big one's grid
the small one's scaled to hold big/small times its copies, ≈ 459k nuclei at 80 mm²) and runs each through
the stain model (bench_scale's cohort), unless `--workdir` already holds that run. Then exports each slide
in a fresh process, timed, its peak RSS the kernel's high-water mark for that process (VmHWM),
which no sampling can miss. Prints per size: nuclei, map px, export seconds, peak RSS, store
size; then the ratio of the big slide's peak RSS to the small one's, against the target (≤ 1.25: the
export streams rows and copies map chunks, so its memory must not grow with the slide).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from bench_scale import big_grid, checked_source, compile_postprocessing, mosaic_arguments, write_cohort

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.zarr_maps import map_arrays, open_slide_maps
from cerberus_batch.testing.mosaic import write_mosaic

MB = 1024 * 1024
TARGET_RSS_RATIO = 1.25


def run_slide(folder: Path, area: float | None, grid: tuple[int, int] | None, args) -> tuple[Path, tuple[int, int]]:
    """The slide's output folder, run unless a finished run is there; and the mosaic's grid."""
    out = folder / "out"
    slides = folder / "slides"
    existing = sorted(slides.glob("*.svs"))
    if (out / "run_report.json").is_file() and existing and (folder / "grid.txt").is_file():
        return out, tuple(int(v) for v in (folder / "grid.txt").read_text().split())  # type: ignore[return-value]
    started = time.perf_counter()
    if grid is None:
        mosaic = write_mosaic(slides / "mosaic.svs", args.source, tissue_mm2=area)
    else:
        mosaic = write_mosaic(slides / "mosaic.svs", args.source, grid)
    (folder / "grid.txt").write_text(f"{mosaic.grid[0]} {mosaic.grid[1]}")
    report = run_cohort(load_cohort(write_cohort(folder, mosaic.path, args.workers, None)), show_progress=False, fresh=True)
    if report.status != "ok":
        raise SystemExit(f"{folder}: run {report.status}")
    print(f"{folder.name}: {mosaic.size[0]}x{mosaic.size[1]} px mosaic run in {time.perf_counter() - started:.0f} s", flush=True)
    return out, mosaic.grid


def export(out: Path, target: Path) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one export, in a process of its own.

    The peak is the process's own VmHWM, read as it ends: a forked child's rusage would also count
    the memory of this process (the run's client) it was forked from."""
    code = ("from cerberus_batch.cli import main\n"
            "main(standalone_mode=False)\n"
            "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')))")
    command = [sys.executable, "-c", code, "export", str(out), "--format", "spatialdata", "--all", "-o", str(target)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"export of {out} failed: {done.stderr[-2000:]}")
    print(done.stdout.strip().splitlines()[0], flush=True)
    return seconds, int(done.stdout.split("VmHWM:")[1].split()[0]) * 1024  # kB


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    args = mosaic_arguments(__doc__).parse_args()
    checked_source(args)
    compile_postprocessing()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        peaks = {}
        grid = None
        for label, area in (("small", args.small), ("big", args.big)):
            folder = work / label
            folder.mkdir(parents=True, exist_ok=True)
            out, grid = run_slide(folder, area, None if grid is None else big_grid(grid, args.big / args.small), args)
            layout = OutputLayout(out)
            nuclei = sum(pq.ParquetFile(p).metadata.num_rows for p in layout.table_files("nuclei"))
            slide = layout.table_slides(["nuclei"])[0]
            pixels = sum(a.size for a in map_arrays(open_slide_maps(layout.maps(slide))).values())
            target = folder / "export"
            seconds, peak = export(out, target)
            peaks[label] = peak
            print(f"{label}: {nuclei} nuclei, {pixels / 1e6:.0f} M map values (level 0): export {seconds:.1f} s, "
                  f"peak RSS {peak / MB:.0f} MiB, store {size_of(target) / MB:.0f} MiB", flush=True)
    ratio = peaks["big"] / peaks["small"]
    print(f"export peak RSS big/small: {ratio:.2f} (target ≤ {TARGET_RSS_RATIO}: {'met' if ratio <= TARGET_RSS_RATIO else 'MISSED'})")


if __name__ == "__main__":
    main()
