"""Worker memory, merge cost and instance/inference overlap vs slide size, on real H&E.

    python benchmarks/bench_scale.py [--small 20] [--big 80] [--workers 2] [--source CMU-1-Small-Region.svs]
    python benchmarks/bench_scale.py --small 2 --big 8        # quick check, about 2 minutes on 2 cores

Builds two slides from CMU-1-Small-Region's level 0 mirrored into a mosaic
(`cerberus_batch.testing.mosaic`), aimed at `--small` and `--big` mm² of tissue: the small one's grid
is the nearest-to-square one with enough copies, the big one's the small grid scaled so it holds at
least big/small times the copies. Each slide is one run of `run_cohort` (stain model, default
processing) on a fresh distributed LocalCluster of `--workers` single-threaded worker processes.
Prints per size, measured in this run:
- wall seconds of `run_cohort`, tissue mm² (the plan's), nuclei (summary.csv), end-to-end
  nuclei/s/core (nuclei / wall / worker threads);
- summed inference and instance-task seconds (the chunks' and the border shares' tasks), the QC
  overview's and the merge's seconds (each task's compute time);
- every worker's peak RSS: the largest psutil sample (every `--interval` s, background thread)
  and the kernel's high-water mark (VmHWM, read from the worker at the end), which no sampling
  can miss; the "peak" used below is the larger of the two;
- merge peak RSS: the largest sample of the worker running the merge, taken within the merge's
  compute interval (widened by one sampling interval either side, so a short merge still has one);
- overlap: the share of instance-task compute time that ran before the slide's last inference
  task finished (while the slide still had inference pending).
Task times are the `compute` start/stop times Dask's scheduler records for each task
(`distributed.get_task_stream`); tasks are told apart by their key (see `task_kind`).
Then the ratios of issue 11, each with its target and whether it is met (a miss does not fail
the process: this is a benchmark):
largest worker peak RSS big/small ≤ 1.10; merge / instance seconds at the big size ≤ 5%;
merge peak RSS big/small ≤ 1.25; overlap at the big size ≥ 70%.

CMU-1-Small-Region.svs is the test suite's copy ($CERBERUS_TEST_CACHE or
~/.cache/cerberus-batch-tests; `pytest tests/test_mosaic.py` fetches it) unless `--source` is given.
Benchmark-only dependency: psutil.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import yaml
from distributed import Client, LocalCluster, get_task_stream

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.slides import Transform
from cerberus_batch.tasks.chunk import chunk_instances
from cerberus_batch.tasks.geometry import SlideGeometry
from cerberus_batch.tasks.kinds import SlideKinds
from cerberus_batch.tasks.merge import merge_slide
from cerberus_batch.testing.maps import synthetic_maps
from cerberus_batch.testing.mosaic import write_mosaic

MB = 1024 * 1024
CACHE = Path(os.environ.get("CERBERUS_TEST_CACHE", Path.home() / ".cache" / "cerberus-batch-tests"))
INSTANCE_TASKS = ("instances", "border")  # the tasks that find nuclei: per chunk, and per share of the chunk borders
TARGETS = {"worker_rss": 1.10, "merge_share": 0.05, "merge_rss": 1.25, "overlap": 0.70}


def task_kind(key: object) -> tuple[str, str] | None:
    """(kind, slide id) of a pipeline task key, or None for any other task.

    Keys are `plan-<slide>-<token>`, `infer-<slide>-<chunk>-<token>`,
    `instances-<slide>-<chunk>-<token>`, `border-<slide>-<share>-<token>`, `merge-<slide>-<token>`,
    `overview-<slide>-<token>` (slide ids may hold '-').
    """
    kind, _, rest = str(key).partition("-")
    if kind not in ("plan", "infer", "instances", "border", "merge", "overview") or "-" not in rest:
        return None
    slide = rest.rpartition("-")[0]  # drop the run token
    if kind in ("infer", "instances", "border"):
        slide, _, chunk = slide.rpartition("-")
        if not chunk.isdigit():
            return None
    return kind, slide


@dataclass
class Task:
    kind: str
    slide: str
    worker: str
    start: float
    stop: float

    @property
    def seconds(self) -> float:
        return self.stop - self.start


def tasks_of(stream: list[dict]) -> list[Task]:
    """Each pipeline task's compute interval, from the scheduler's task stream records."""
    out = []
    for record in stream:
        what = task_kind(record["key"])
        if what is None:
            continue
        for part in record["startstops"]:
            if part["action"] == "compute":
                out.append(Task(*what, record.get("worker", ""), part["start"], part["stop"]))
    return out


class RssSampler(threading.Thread):
    """Samples the RSS of some processes every `interval` s until stopped: (time, bytes) per pid."""

    def __init__(self, pids: list[int], interval: float) -> None:
        super().__init__(daemon=True)
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in pids}
        self.interval = interval
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for pid, process in self.processes.items():
                try:
                    self.samples[pid].append((time.time(), process.memory_info().rss))
                except psutil.Error:  # the process is gone (a restarted worker)
                    pass
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def peak(self, pid: int, start: float = -math.inf, stop: float = math.inf) -> int:
        """Largest sample of `pid` within [start, stop] (0 when none)."""
        return max((rss for t, rss in self.samples.get(pid, ()) if start <= t <= stop), default=0)


def high_water_mark() -> int:
    """This process's peak RSS in bytes, by the kernel (VmHWM); run on each worker."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Result:
    label: str
    grid: tuple[int, int]
    wall: float
    tissue_mm2: float
    nuclei: int
    cores: int
    tasks: list[Task]
    worker_peaks: dict[str, tuple[int, int]]  # address -> (largest sample, VmHWM)
    merge_rss: int
    extra: dict = field(default_factory=dict)

    def seconds(self, *kinds: str) -> float:
        return sum(t.seconds for t in self.tasks if t.kind in kinds)

    @property
    def largest_worker_peak(self) -> int:
        return max(max(peaks) for peaks in self.worker_peaks.values())

    def overlap(self, kinds: tuple[str, ...] = INSTANCE_TASKS) -> float:
        """Share of the seconds of tasks of `kinds` before the slide's last inference task finished."""
        last_infer = {}
        for t in self.tasks:
            if t.kind == "infer":
                last_infer[t.slide] = max(last_infer.get(t.slide, -math.inf), t.stop)
        instances = [t for t in self.tasks if t.kind in kinds]
        total = sum(t.seconds for t in instances)
        during = sum(max(0.0, min(t.stop, last_infer.get(t.slide, -math.inf)) - t.start) for t in instances)
        return during / total if total else 0.0


def write_cohort(folder: Path, slide: Path, workers: int, chunk: int | None) -> Path:
    body = {
        "name": f"bench-scale-{slide.stem}", "output": "out", "slides": [{"path": str(slide)}],
        "model": {"kind": "stain"}, "cluster": {"kind": "local", "workers": workers},
    }
    if chunk:
        body["processing"] = {"chunk": chunk, "tile": min(chunk, 1008)}
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def measure(label: str, mosaic, folder: Path, args) -> Result:
    cohort = load_cohort(write_cohort(folder, mosaic.path, args.workers, args.chunk))
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        sampler = RssSampler(list(pids.values()), args.interval)
        sampler.start()
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            report = run_cohort(cohort, show_progress=False, cluster=cluster, fresh=True)
            wall = time.perf_counter() - started
        sampler.stop()
        hwm = client.run(high_water_mark)
        records = stream.data
    outcome = next(iter(report.slides.values()))
    if report.status != "ok":
        raise SystemExit(f"{label}: run {report.status}: {outcome.error}")
    summary = pd.read_csv(cohort.output / "summary.csv")
    tasks = tasks_of(records)
    merges = [t for t in tasks if t.kind == "merge"]
    merge_rss = max((sampler.peak(pids.get(m.worker, -1), m.start - args.interval, m.stop + args.interval)
                     for m in merges), default=0)
    peaks = {address: (sampler.peak(pid), hwm.get(address, 0)) for address, pid in pids.items()}
    return Result(label, mosaic.grid, wall, outcome.tissue_mm2, int(summary["nuclei_count"].sum()),
                  args.workers, tasks, peaks, merge_rss, {"chunks": outcome.chunks})


def show(r: Result) -> None:
    infer, inst, merge = r.seconds("infer"), r.seconds(*INSTANCE_TASKS), r.seconds("merge")
    print(f"{r.label}: {r.grid[0]}x{r.grid[1]} copies, {r.extra['chunks']} chunks, tissue {r.tissue_mm2:.1f} mm², "
          f"{r.nuclei} nuclei; wall {r.wall:.1f} s, {r.nuclei / r.wall / r.cores:.0f} nuclei/s/core end to end")
    print(f"  task seconds: inference {infer:.1f}, instances {inst:.1f} (chunks {r.seconds('instances'):.1f}, "
          f"borders {r.seconds('border'):.1f}), overview {r.seconds('overview'):.2f}, merge {merge:.2f} "
          f"({merge / inst:.1%} of instances); merge peak RSS {r.merge_rss / MB:.0f} MB; "
          f"instance time overlapping inference {r.overlap():.0%} (chunk tasks alone {r.overlap(('instances',)):.0%})")
    for address, (sampled, hwm) in sorted(r.worker_peaks.items()):
        print(f"  worker {address}: peak RSS {sampled / MB:.0f} MB sampled, {hwm / MB:.0f} MB VmHWM")


def verdict(name: str, value: float, target: float, at_most: bool, percent: bool = False) -> None:
    met = value <= target if at_most else value >= target
    shown = f"{value:.1%}" if percent else f"{value:.2f}"
    goal = f"{'≤' if at_most else '≥'} {target:.0%}" if percent else f"{'≤' if at_most else '≥'} {target:.2f}"
    print(f"{name}: {shown} (target {goal}: {'met' if met else 'MISSED'})")


def big_grid(small: tuple[int, int], ratio: float) -> tuple[int, int]:
    """The small grid scaled by sqrt(ratio) per side, holding at least ratio × its copies."""
    f = math.sqrt(ratio)
    columns, rows = max(1, round(small[0] * f)), max(1, round(small[1] * f))
    while columns * rows < ratio * small[0] * small[1] - 1e-9:
        columns += 1
    return columns, rows


def compile_postprocessing() -> None:
    """Post-process small synthetic maps here first: numba keeps the compiled code in its on-disk cache,
    so no worker compiles inside a timed run (seconds of a chunk task, and LLVM's memory in its peak RSS)."""
    maps = synthetic_maps(1152, 1152, seed=0)
    geometry, kinds = SlideGeometry("compile", Transform(1.0, 1.0), 0.5), SlideKinds.for_model()
    boxes = [(x, y, 576, 576) for y in (0, 576) for x in (0, 576)]
    merge_slide(maps, [chunk_instances(maps, box, geometry, kinds) for box in boxes], geometry, kinds)


def mosaic_arguments(description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that run two mosaics (this one, bench_export): their tissue areas,
    the workers, the slide they mirror and where they are kept."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=float, default=20.0, help="tissue mm² of the small slide")
    parser.add_argument("--big", type=float, default=80.0, help="tissue mm² of the big slide")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded worker processes")
    parser.add_argument("--source", type=Path, default=CACHE / "CMU-1-Small-Region.svs", help="the H&E slide to mirror")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the mosaics and outputs here (default: a temporary folder)")
    return parser


def checked_source(args: argparse.Namespace) -> None:
    if not args.source.is_file():
        raise SystemExit(f"{args.source}: not found; run `pytest tests/test_mosaic.py` once to fetch it, or pass --source")


def main() -> None:
    parser = mosaic_arguments(__doc__)
    parser.add_argument("--chunk", type=int, help="processing chunk px (default: the cohort default)")
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling interval, s")
    args = parser.parse_args()
    checked_source(args)
    compile_postprocessing()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        results = []
        grid = None
        for label, area in (("small", args.small), ("big", args.big)):
            folder = work / label
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            if grid is None:
                mosaic = write_mosaic(folder / "slides" / "mosaic-small.svs", args.source, tissue_mm2=area)
            else:
                mosaic = write_mosaic(folder / "slides" / "mosaic-big.svs", args.source, big_grid(grid, args.big / args.small))
            grid = mosaic.grid
            print(f"{label}: wrote {mosaic.size[0]}x{mosaic.size[1]} px mosaic ({grid[0]}x{grid[1]} copies of "
                  f"{mosaic.copy_tissue_mm2:.2f} mm² tissue) in {time.perf_counter() - started:.0f} s", flush=True)
            results.append(measure(label, mosaic, folder, args))
            show(results[-1])
    small, big = results
    print(f"tissue area big/small: {big.tissue_mm2 / small.tissue_mm2:.2f} (want ≥ {args.big / args.small:.2f})")
    verdict("largest worker peak RSS big/small", big.largest_worker_peak / small.largest_worker_peak, TARGETS["worker_rss"], True)
    verdict("merge seconds / instance-task seconds (big)", big.seconds("merge") / big.seconds(*INSTANCE_TASKS),
            TARGETS["merge_share"], True, percent=True)
    verdict("merge peak RSS big/small", big.merge_rss / small.merge_rss if small.merge_rss else math.inf, TARGETS["merge_rss"], True)
    verdict("instance-task time overlapping inference (big)", big.overlap(), TARGETS["overlap"], False, percent=True)
    # The border tasks handle the objects across chunk borders, like the merge: counted as merge work instead.
    print("with the border tasks counted as merge work, not as instance tasks:")
    verdict("  merge + border seconds / chunk instance-task seconds (big)",
            big.seconds("merge", "border") / big.seconds("instances"), TARGETS["merge_share"], True, percent=True)
    verdict("  chunk instance-task time overlapping inference (big)", big.overlap(("instances",)), TARGETS["overlap"],
            False, percent=True)


if __name__ == "__main__":
    main()
