"""Feed the GPU: a run's CPU side in core-seconds per tissue megapixel, stage by stage.

    python benchmarks/bench_feed.py [--grid 4x4] [--workers 2] [--source CMU-1-Small-Region.svs]
    python benchmarks/bench_feed.py --grid 2x2      # quick check

Two runs, each `run_cohort` on a fresh LocalCluster of `--workers` single-threaded worker processes:
- the stain model on CMU-1-Small-Region mirrored into a `--grid` mosaic (`cerberus_batch.testing.mosaic`;
  4x4 holds about 26 mm² of tissue), automatic tissue mask, default processing;
- Cerberus with the parity weights (tests/parity_model.py) on CMU-1-Small-Region with a given
  0.53 mm² tissue mask (2 chunks at the defaults; the model's forward pass on the CPU takes most of it).
Prints per run, measured in this run: tissue Mpx (processing px of the plan's cells holding tissue), the core-s per
tissue Mpx of every stage (`seconds_by_stage` of run_report.json, summed over the cohort's slides), the
CPU side (every stage but `model`), and the cores one GPU would need to be fed at 12 and at 100 tissue Mpx/s
(CPU side × rate); the task stream's compute seconds per tissue Mpx by task (`distributed.get_task_stream`);
and whether the stages add up to the task stream's compute seconds within 5%; and how long each worker took
to get ready when it started (`PrepareWorker`: numba's set-up; once per worker process, outside the tasks).

CMU-1-Small-Region.svs is the test suite's copy ($CERBERUS_TEST_CACHE or ~/.cache/cerberus-batch-tests;
`pytest tests/test_mosaic.py` fetches it) unless `--source` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from distributed import Client, LocalCluster, get_task_stream
from PIL import Image

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import PrepareWorker, run_cohort
from cerberus_batch.pipeline.stages import STAGES
from cerberus_batch.slides import ChunkPlan
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.testing.mosaic import write_mosaic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the parity model
from parity_model import make_parity_model_dir  # noqa: E402

CACHE = Path(os.environ.get("CERBERUS_TEST_CACHE", Path.home() / ".cache" / "cerberus-batch-tests"))
TARGET = 0.15  # core-s per tissue Mpx: the CPU side of the stain run (issue 23)
AGREEMENT = 0.05  # stages vs the task stream
RATES = (12, 100)  # tissue Mpx/s a GPU infers: a modest card, an H100 at bf16 (issue 23's estimate)


def cohort_file(folder: Path, slide: Path, model: dict, mask: Path | None = None) -> Path:
    entry = {"path": str(slide), **({"mask": str(mask)} if mask else {})}
    body = {"name": "feed", "output": str(folder / "out"), "slides": [entry], "model": model}
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def given_mask(folder: Path) -> Path:
    """A 0.53 mm² rectangle on CMU-1-Small-Region (2220 x 2967 px at 0.499 µm/px), as a quarter-size PNG."""
    mask = np.zeros((2967 // 4, 2220 // 4), np.uint8)
    mask[300 // 4 : 1820 // 4, 700 // 4 : 2100 // 4] = 255
    (folder / "masks").mkdir()
    path = folder / "masks" / "cmu.png"
    Image.fromarray(mask).save(path)
    return path


def measure(label: str, cohort_path: Path, workers: int) -> float:
    """Run the cohort; print its stages per tissue Mpx; return its CPU side (core-s per tissue Mpx)."""
    cohort = load_cohort(cohort_path)
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            report = run_cohort(cohort, show_progress=False, cluster=cluster, fresh=True)
            wall = time.perf_counter() - started
        assert report.status == "ok", report.slides
        started = client.run(lambda dask_worker: dask_worker.plugins[PrepareWorker.name].seconds)
        by_task: dict[str, float] = {}
        for task in stream.data:
            kind = str(task["key"]).partition("-")[0]  # keys are `<task>-<slide>…` (pipeline/graph.py)
            by_task[kind] = by_task.get(kind, 0.0) + sum(
                part["stop"] - part["start"] for part in task["startstops"] if part["action"] == "compute")
        streamed = sum(by_task.values())
    layout = OutputLayout(cohort.output)
    slides = json.loads(layout.run_report.read_text())["slides"]
    stages = {stage: sum(s["seconds_by_stage"][stage] for s in slides.values()) for stage in STAGES}
    tissue_mpx = sum(ChunkPlan.from_json(layout.plan(slide.id).read_text()).tissue_mpx for slide in cohort.slides)
    cpu_side = sum(seconds for stage, seconds in stages.items() if stage != "model") / tissue_mpx
    print(f"\n{label}: {tissue_mpx:.1f} tissue Mpx, {workers} workers, {wall:.1f} s wall (run_cohort, cluster started)")
    for stage, seconds in stages.items():
        print(f"  {stage:<12} {seconds / tissue_mpx:7.4f} core-s per tissue Mpx   ({seconds:8.1f} s)")
    print(f"  CPU side (all but model): {cpu_side:.4f} core-s per tissue Mpx; one GPU at "
          + ", ".join(f"{rate} Mpx/s needs {cpu_side * rate:.1f} cores" for rate in RATES))
    print("  by task (the task stream's compute): " + ", ".join(
        f"{kind} {seconds / tissue_mpx:.4f}" for kind, seconds in sorted(by_task.items(), key=lambda kv: -kv[1])))
    print(f"  worker start, once per worker process and outside the tasks: ready in "
          + ", ".join(f"{seconds:.2f} s" for seconds in started.values()) + " (`PrepareWorker`)")
    total = sum(stages.values())
    gap = abs(total - streamed) / streamed
    print(f"  stages add up to {total:.1f} s; the task stream's compute: {streamed:.1f} s; "
          f"{gap:.1%} apart ({'within' if gap <= AGREEMENT else 'MORE than'} {AGREEMENT:.0%})")
    return cpu_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="4x4", help="columns x rows of the stain run's mosaic")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stain-only", action="store_true", help="skip the Cerberus run (quicker)")
    parser.add_argument("--source", type=Path, default=CACHE / "CMU-1-Small-Region.svs")
    args = parser.parse_args()
    grid = tuple(int(n) for n in args.grid.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        stain, cerberus = Path(tmp) / "stain", Path(tmp) / "cerberus"
        (stain / "slides").mkdir(parents=True)
        (cerberus / "slides").mkdir(parents=True)
        mosaic = write_mosaic(stain / "slides" / "mosaic.svs", args.source, grid)
        cpu_side = measure(f"stain model, {grid[0]}x{grid[1]} mosaic of CMU-1-Small-Region",
                           cohort_file(stain, mosaic.path, {"kind": "stain"}), args.workers)
        print(f"\nstain run's CPU side {cpu_side:.4f} core-s per tissue Mpx: target <= {TARGET} "
              f"{'met' if cpu_side <= TARGET else 'NOT met'}")
        if args.stain_only:
            return
        slide = cerberus / "slides" / "cmu.svs"
        slide.symlink_to(args.source.resolve())
        model = make_parity_model_dir(cerberus / "model")
        measure("Cerberus (parity weights), CMU-1-Small-Region, 0.53 mm² given mask",
                cohort_file(cerberus, slide, {"kind": "cerberus", "weights": str(model)}, given_mask(cerberus)), args.workers)


if __name__ == "__main__":
    main()
