"""Output megapixels per second of CerberusPredictor in patch mode vs tile mode, on one input region.

Each mode runs in a fresh subprocess so its peak memory is its own. Patch mode is timed on a strip of
`--patches` cells and extrapolated per megapixel (it costs the same per cell wherever the cell is).

    python benchmarks/bench_model.py                      # 2016 px region, tiles 1008 and 2016, CPU
    python benchmarks/bench_model.py --size 4032 --device cuda --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the parity model directory maker; speed does not depend on weights

from parity_model import make_parity_model_dir  # noqa: E402

from cerberus_batch.grid import CELL, CONTEXT  # noqa: E402
from cerberus_batch.model import CerberusPredictor  # noqa: E402


def region(size: int, slide: Path | None) -> np.ndarray:
    """The input region (size + context): read from `slide` at (0, 0) level 0, else seeded noise."""
    side = size + 2 * CONTEXT
    if slide is None:
        return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    import tiffslide

    with tiffslide.TiffSlide(slide) as opened:
        return np.asarray(opened.read_region((0, 0), 0, (side, side)).convert("RGB"))


def _cpu_seconds() -> float:
    """User + system time of this process: on a shared machine it varies less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One mode in this process: seconds, output megapixels and peak memory."""
    image = np.load(args.image)
    tile = CELL if args.mode == "patch" else args.tile
    if args.mode == "patch":  # a strip of cells stands for the whole region
        image = image[: CELL + 2 * CONTEXT, : args.patches * CELL + 2 * CONTEXT]
    predictor = CerberusPredictor(
        args.model_dir,
        mode=args.mode,
        tile=tile,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    cuda = predictor.device.type == "cuda"
    if cuda:  # kernel selection and allocator warm-up are not throughput
        predictor.predict(image)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    predictor.predict(image)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    megapixels = (image.shape[0] - 2 * CONTEXT) * (image.shape[1] - 2 * CONTEXT) / 1e6
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "megapixels": megapixels, "peak_mib": peak, "device": predictor.device.type}


def run_mode(args: argparse.Namespace, image: Path, mode: str, tile: int, batch_size: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", "--image", str(image), "--model-dir", str(args.model_dir)]
    command += ["--mode", mode, "--tile", str(tile), "--batch-size", str(batch_size), "--patches", str(args.patches)]
    command += ["--device", args.device] if args.device else []
    command += ["--amp", args.amp] if args.amp else []
    command += [] if args.channels_last is None else ["--channels-last" if args.channels_last else "--no-channels-last"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {tile}: worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2016, help="output region side in px (multiple of 144)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[1008, 2016], help="tile sizes to measure")
    parser.add_argument("--patches", type=int, default=6, help="patch-mode cells to time")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per batch in patch mode")
    parser.add_argument("--tile-batch-size", type=int, default=1, help="tiles per batch in tile mode")
    parser.add_argument("--model-dir", type=Path, help="model directory (default: parity weights in a temp dir)")
    parser.add_argument("--slide", type=Path, help="read the region from this slide instead of noise")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--amp", choices=["bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="default: on for CPU only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="tile", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=1008, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return
    if args.size % CELL:
        parser.error(f"--size must be a multiple of {CELL}")
    with tempfile.TemporaryDirectory() as scratch:
        args.model_dir = args.model_dir or make_parity_model_dir(Path(scratch) / "model")
        image = Path(scratch) / "region.npy"
        np.save(image, region(args.size, args.slide))
        runs = [("patch", CELL, args.batch_size)] + [("tile", t, args.tile_batch_size) for t in args.tiles]
        results = [(mode, tile, run_mode(args, image, mode, tile, batch)) for mode, tile, batch in runs]
    patch_rate = results[0][2]["megapixels"] / results[0][2]["seconds"]
    print(f"output region {args.size}x{args.size} px on {results[0][2]['device']} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), amp={args.amp}, channels_last={args.channels_last}")  # fmt: skip
    patch_cpu_rate = results[0][2]["megapixels"] / results[0][2]["cpu_seconds"]
    print(f"{'mode':<6}{'tile':>6}{'out MP':>9}{'seconds':>10}{'MP/s':>9}{'vs patch':>10}"
          f"{'CPU s':>9}{'vs patch':>10}{'peak MiB':>10}")  # fmt: skip
    for mode, tile, r in results:
        rate, cpu_rate = r["megapixels"] / r["seconds"], r["megapixels"] / r["cpu_seconds"]
        print(f"{mode:<6}{tile:>6}{r['megapixels']:>9.3f}{r['seconds']:>10.1f}{rate:>9.4f}{rate / patch_rate:>9.2f}x"
              f"{r['cpu_seconds']:>9.1f}{cpu_rate / patch_cpu_rate:>9.2f}x{r['peak_mib']:>10.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
