"""Scheduler overhead and the `run` process's memory for cohorts of many small slides.

    python benchmarks/bench_cohort.py [--sizes 100 500] [--workers 2] [--size 2000] [--distinct 4]
    python benchmarks/bench_cohort.py --sizes 20 100          # quick check

Generates `--distinct` synthetic slides (`--size` × `--size` level-0 px at 0.25 µm/px, one
2016-px chunk each at the default 0.5 µm/px) and, per cohort size N, a cohort of N slides with
distinct ids whose files are hard links to them (copies where links fail), stain model.

Each cohort runs as the real command, `cerberus-batch run --fresh --no-progress cohort.yaml`, in a
subprocess, against a scheduler this benchmark starts (a distributed LocalCluster of `--workers`
single-threaded worker processes, reached through the cohort's `cluster: {kind: address}`), so:
- the `run` process is only the client that drives the cohort (plans, submits, reacts, writes the
  report and summary); its peak RSS is the kernel's high-water mark (VmHWM) read from /proc while
  it runs, with psutil samples every `--interval` s beside it;
- task times come from this benchmark's own client on the same scheduler: the `compute`
  start/stop of every task the scheduler's task stream records (`distributed.get_task_stream`).

Printed per size, measured in this run:
- wall: the `run` process from start to exit; startup: from its start to the first task's start
  (interpreter, imports, cohort validation, model check, connecting);
- busy: summed task compute seconds / workers (and per task kind);
- overhead = 1 − busy / span, where span runs from the first task's start to the `run` process's
  exit: the share of worker time spent idle while the run was driving work (scheduling, the
  client's reactions, waits between a slide's stages, the report and summary at the end). The
  constant startup is left out of the target's figure (it does not grow with the cohort) but
  printed, and the overhead against the whole wall is printed beside it.
Then: overhead at the largest size (target ≤ 10%) and run peak RSS largest/smallest size (target
≤ 1.2), each said met or missed; a miss does not fail the process (this is a benchmark).
Task keys are parsed by `bench_scale.task_kind`, the one place that knows their names.
Benchmark-only dependency: psutil.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml
from bench_scale import task_kind
from distributed import Client, LocalCluster, get_task_stream

from cerberus_batch.testing.slides import make_synthetic_slide

MB = 1024 * 1024
TARGETS = {"overhead": 0.10, "rss": 1.2}
KINDS = ("plan", "infer", "instances", "border", "merge", "overview")


class ProcessMemory(threading.Thread):
    """Follows one process until it exits: largest psutil RSS sample and last VmHWM read."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.sampled = self.hwm = 0
        self.halt = threading.Event()

    def run(self) -> None:
        process = psutil.Process(self.pid)
        status = Path(f"/proc/{self.pid}/status")
        while not self.halt.is_set():
            try:
                self.sampled = max(self.sampled, process.memory_info().rss)
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) * 1024)
            except (psutil.Error, OSError):  # exited (or a zombie whose status has no VmHWM)
                pass
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join()

    @property
    def peak(self) -> int:
        return max(self.sampled, self.hwm)


def make_slides(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_synthetic_slide(folder / f"base-{i}.svs", size=(size, size), seed=i).path for i in range(count)]


def write_cohort(folder: Path, bases: list[Path], count: int, scheduler: str) -> Path:
    """A cohort of `count` slides with distinct ids, each a hard link to one of `bases`."""
    slides = folder / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        path = slides / f"s{i:05d}.svs"
        if path.exists():  # a kept --workdir
            path.unlink()
        try:
            os.link(bases[i % len(bases)], path)
        except OSError:
            shutil.copyfile(bases[i % len(bases)], path)
        entries.append({"path": str(path)})
    body = {
        "name": f"bench-cohort-{count}", "output": "out", "slides": entries, "model": {"kind": "stain"},
        "cluster": {"kind": "address", "address": {"scheduler": scheduler}},
    }
    cohort = folder / "cohort.yaml"
    cohort.write_text(yaml.safe_dump(body))
    return cohort


def run_size(count: int, bases: list[Path], folder: Path, args) -> dict:
    command = shutil.which("cerberus-batch", path=str(Path(sys.executable).parent)) or shutil.which("cerberus-batch")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        cohort = write_cohort(folder, bases, count, cluster.scheduler_address)
        log = folder / "run.log"
        with get_task_stream(client) as stream, log.open("w") as out:
            started = time.time()
            process = subprocess.Popen([command, "run", "--fresh", "--no-progress", str(cohort)], stdout=out, stderr=subprocess.STDOUT)
            memory = ProcessMemory(process.pid, args.interval)
            memory.start()
            code = process.wait()
            exited = time.time()
            memory.stop()
        records = stream.data
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        raise SystemExit(f"{count} slides: `cerberus-batch run` exited {code}:\n" + "\n".join(tail))
    busy: dict[str, float] = defaultdict(float)
    starts = []
    for record in records:
        kind = (task_kind(record["key"]) or (None,))[0]
        for part in record["startstops"]:
            if kind and part["action"] == "compute":
                busy[kind] += part["stop"] - part["start"]
                starts.append(part["start"])
    first = min(starts)
    wall, span = exited - started, exited - first
    per_worker = sum(busy.values()) / args.workers
    return {
        "count": count, "wall": wall, "startup": first - started, "span": span, "busy": per_worker,
        "busy_by_kind": dict(busy), "tasks": sum(1 for r in records if task_kind(r["key"])),
        "overhead": 1 - per_worker / span, "overhead_wall": 1 - per_worker / wall,
        "rss": memory.peak, "rss_sampled": memory.sampled,
    }


def show(r: dict) -> None:
    kinds = ", ".join(f"{k} {r['busy_by_kind'].get(k, 0.0):.1f}" for k in KINDS)
    print(f"{r['count']} slides: wall {r['wall']:.1f} s (startup {r['startup']:.1f} s, span {r['span']:.1f} s); "
          f"{r['tasks']} tasks, summed task seconds / workers {r['busy']:.1f} s ({kinds} s summed); "
          f"overhead {r['overhead']:.1%} of span ({r['overhead_wall']:.1%} of wall); "
          f"run peak RSS {r['rss'] / MB:.0f} MB (VmHWM; largest psutil sample {r['rss_sampled'] / MB:.0f} MB)", flush=True)


def verdict(name: str, value: float, target: float, shown: str, goal: str) -> None:
    print(f"{name}: {shown} (target {goal}: {'met' if value <= target else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500], help="cohort sizes, slides")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded worker processes")
    parser.add_argument("--size", type=int, default=2000, help="level-0 side of each generated slide, px at 0.25 µm/px")
    parser.add_argument("--distinct", type=int, default=4, help="distinct generated slides the cohort links to")
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling interval, s")
    parser.add_argument("--workdir", type=Path, help="keep slides and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        bases = make_slides(work / "generated", args.distinct, args.size)
        results = []
        for count in sorted(args.sizes):
            results.append(run_size(count, bases, work / f"cohort-{count}", args))
            show(results[-1])
    small, big = results[0], results[-1]
    verdict(f"scheduler overhead at {big['count']} slides", big["overhead"], TARGETS["overhead"],
            f"{big['overhead']:.1%}", f"≤ {TARGETS['overhead']:.0%}")
    ratio = big["rss"] / small["rss"]
    verdict(f"run peak RSS {big['count']}/{small['count']} slides", ratio, TARGETS["rss"], f"{ratio:.2f}", f"≤ {TARGETS['rss']:.2f}")


if __name__ == "__main__":
    main()
