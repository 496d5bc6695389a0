"""End-to-end pipeline throughput vs the model alone, and worker memory vs slide size.

    python benchmarks/bench_pipeline.py [--size 4000] [--model-dir DIR] [--workers 1]

Makes a synthetic slide (level-0 side `--size` px at 0.25 µm/px) and one with 4x the
area, then prints, measured in this run:
- processing megapixels per second of `cerberus-batch run` (plan, inference, Zarr
  writes, instances, tables) vs the model alone on the same kept chunks, and their ratio;
- peak worker RSS for the slide and for the 4x slide (flat means memory is bounded
  by the chunk size, not the slide size).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import yaml
from distributed import Client, LocalCluster

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.plan import plan_slide
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.pipeline.work import cohort_predictor
from cerberus_batch.slides import open_slide
from cerberus_batch.testing.slides import make_synthetic_slide


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM, because getrusage's maxrss survives exec and
    a spawned worker would report the peak of the process that started it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_cohort(folder: Path, slide: Path, args) -> Path:
    model = {"kind": "cerberus", "weights": str(args.model_dir)} if args.model_dir else {"kind": "stain"}
    body = {
        "name": "bench", "output": "out", "slides": [{"path": str(slide)}], "model": model,
        "processing": {"chunk": args.chunk, "tile": min(args.chunk, 1008)},
    }
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def model_only(cohort) -> tuple[float, float]:
    """Seconds and processing megapixels of the model alone over the slide's kept chunks."""
    slide = cohort.slides[0]
    view = open_slide(slide.path, mpp=slide.mpp).at_mpp(cohort.processing.mpp)
    _, plan = plan_slide(view, slide, cohort.processing)
    predictor = cohort_predictor(cohort.model, cohort.processing)
    boxes = [(c.x, c.y, c.w, c.h) for c in plan.chunks]
    inputs = {box: view.read(box[0] - 152, box[1] - 152, box[2] + 304, box[3] + 304) for box in boxes}
    started = time.perf_counter()
    for box in boxes:
        predictor.predict(inputs[box])
    return time.perf_counter() - started, sum(w * h for _, _, w, h in boxes) / 1e6


def pipeline(cohort, workers: int) -> tuple[float, float]:
    """Seconds of the whole run and the peak RSS (MB) of its busiest worker."""
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster:
        started = time.perf_counter()
        report = run_cohort(cohort, show_progress=False, cluster=cluster, fresh=True)
        seconds = time.perf_counter() - started
        assert report.status == "ok", report.slides
        with Client(cluster) as client:
            rss = max(client.run(peak_rss_mb).values())
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4000, help="level-0 side of the small slide (px at 0.25 µm/px)")
    parser.add_argument("--chunk", type=int, default=1008)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="Cerberus model folder (default: the stain baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, side in (("1x", args.size), ("4x", 2 * args.size)):
            folder = Path(tmp) / label
            folder.mkdir()
            slide = make_synthetic_slide(folder / "slides" / f"slide-{label}.svs", size=(side, side), seed=1).path
            cohort = load_cohort(write_cohort(folder, slide, args))
            model_seconds, megapixels = model_only(cohort)
            run_seconds, rss = pipeline(cohort, args.workers)
            results[label] = (megapixels, model_seconds, run_seconds, rss)
            print(
                f"{label} slide ({side}x{side} level-0 px): {megapixels:.1f} processing Mpx in kept chunks; "
                f"model alone {megapixels / model_seconds:.2f} Mpx/s, end to end on {args.workers} worker(s) "
                f"{megapixels / run_seconds:.2f} Mpx/s (ratio {model_seconds / run_seconds:.2f}); "
                f"peak worker RSS {rss:.0f} MB"
            )
        print(f"peak worker RSS 4x / 1x area: {results['4x'][3] / results['1x'][3]:.2f}")


if __name__ == "__main__":
    main()
