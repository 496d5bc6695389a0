"""Peak RSS of every process of a `cerberus-batch run` (psutil sampling), on CMU-1-Small-Region with the
parity weights at the default processing settings (tile 1008, chunk 2016, batch 8).

    python benchmarks/bench_memory.py                 # 2 CPU workers
    python benchmarks/bench_memory.py --workers 1 --limit-gb 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CMU slide fetcher and the parity model directory maker

from conftest import fetch_cmu_small_region  # noqa: E402
from parity_model import make_parity_model_dir  # noqa: E402

GB = 1e9
EVERY = 0.1  # seconds between samples


@dataclass
class Sampled:
    """What one sampled run held and did."""

    seconds: float = 0.0
    rss: dict[int, float] = field(default_factory=dict)  # peak bytes per process id
    names: dict[int, str] = field(default_factory=dict)
    gpu_utilisation: list[float] = field(default_factory=list)  # % per sample
    gpu_memory_mib: list[float] = field(default_factory=list)
    returncode: int = 0
    output: str = ""


def _gpu_sample() -> tuple[float, float] | None:
    """(utilisation %, memory used MiB) of the first GPU, from nvidia-smi; None without one."""
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        utilisation, memory = (float(v) for v in line.split(","))
        return utilisation, memory
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _label(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    for marker in ("spawn_main", "forkserver", "cerberus_batch.cli"):
        if marker in command:
            return {"spawn_main": "worker or nanny", "forkserver": "forkserver", "cerberus_batch.cli": "client"}[marker]
    return command[:40]


def sampled_run(command: list[str], gpu: bool = False) -> Sampled:
    """Run `command`, sampling the RSS of it and every process under it (and the GPU, with `gpu`)."""
    result = Sampled()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                result.rss[p.pid] = max(result.rss.get(p.pid, 0), rss)
                result.names.setdefault(p.pid, _label(p))
            if gpu and (g := _gpu_sample()) is not None:
                result.gpu_utilisation.append(g[0])
                result.gpu_memory_mib.append(g[1])
            done.wait(EVERY)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result.output, _ = process.communicate()
    done.set()
    sampler.join()
    result.seconds, result.returncode = time.perf_counter() - started, process.returncode
    return result


def write_cohort(
    folder: Path, slide: Path, model_dir: Path, workers: int, mask: Path | None = None, processing: dict | None = None,
    **model: object,
) -> Path:
    """A one-slide cohort, at the default processing settings unless `processing` (the slide's automatic mask unless `mask`)."""
    body = {
        "name": "bench-memory", "output": str(folder / "out"),
        "slides": [{"path": str(slide), "id": "cmu", **({"mask": str(mask)} if mask else {})}],
        "model": {"kind": "cerberus", "weights": str(model_dir), **model},
        "processing": processing or {},
        "cluster": {"workers": workers, "dashboard_address": ":0"},
    }
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def run_command(cohort: Path) -> list[str]:
    return [sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="CPU workers of the local cluster")
    parser.add_argument("--limit-gb", type=float, default=3.0, help="the peak RSS a worker must stay under")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cohort = write_cohort(folder, fetch_cmu_small_region(), make_parity_model_dir(folder / "model"), args.workers, device="cpu")
        run = sampled_run(run_command(cohort))
    if run.returncode != 0:
        raise SystemExit(f"run failed ({run.returncode}):\n{run.output}")
    print(f"cerberus-batch run, CMU-1-Small-Region, parity weights, defaults, {args.workers} CPU workers: {run.seconds:.0f} s")
    print(f"{'pid':>8}  {'process':<18}{'peak RSS GB':>12}")
    for pid, rss in sorted(run.rss.items(), key=lambda item: -item[1]):
        print(f"{pid:>8}  {run.names[pid]:<18}{rss / GB:>12.2f}")
    worst = max(run.rss.values()) / GB
    print(f"largest peak RSS {worst:.2f} GB: {'within' if worst <= args.limit_gb else 'OVER'} {args.limit_gb} GB")
    if worst > args.limit_gb:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
