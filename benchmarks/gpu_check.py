"""One short check (≤ 5 minutes on a GPU) that the CUDA path computes Cerberus's numbers, and how fast.

1. Parity with the reference logits (tests/data/forward_reference.npz, parity weights): fp32, TF32,
   bf16 and fp16 (CPU: fp32 and oneDNN bf16), max |Δlogit| and argmax agreement per head.
2. Model-only output Mpx/s for tiles of 1008 and 2016 px at the largest batch that fits (the
   predictor's own memory sizing), and the peak device memory.
3. End to end: `cerberus-batch run` on CMU-1-Small-Region on a local cluster (one GPU worker plus
   CPU workers when there is a GPU), output Mpx/s of tissue cells, GPU utilisation sampled.
   With --quick: tiles and chunks of 288 px on a few cells.

    python benchmarks/gpu_check.py                      # CUDA
    python benchmarks/gpu_check.py --device cpu --quick # the test's run: small tiles, a small region

Exits 1 when fp32 parity fails (|Δlogit| > 1e-3 or an argmax differs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_memory import GB, run_command, sampled_run, write_cohort  # noqa: E402
from bench_model import TOLERANCE, reference_parity  # noqa: E402
from conftest import fetch_cmu_small_region  # noqa: E402
from parity_model import make_parity_model_dir  # noqa: E402

from cerberus_batch.defaults import CHUNK  # noqa: E402
from cerberus_batch.grid import CELL, CONTEXT  # noqa: E402
from cerberus_batch.model import CerberusPredictor, InferenceOptions  # noqa: E402
from cerberus_batch.slides import open_slide, plan_chunks, tissue_mask  # noqa: E402

NUMERICS = {"cuda": ("fp32", "tf32", "bf16", "fp16"), "cpu": ("fp32", "bf16")}


def predictor(model_dir: Path, device: str, numerics: str, tile: int, batch_size: int = 1) -> CerberusPredictor:
    amp = numerics if numerics in ("bf16", "fp16") else None
    options = InferenceOptions(tile=tile, batch_size=batch_size, device=device, amp=amp)
    return CerberusPredictor(model_dir, options=options, tf32=numerics == "tf32")


def parity(model_dir: Path, device: str) -> bool:
    print(f"1. parity with the reference logits on {device} (2 CMU crops, parity weights)")
    passed = True
    for numerics in NUMERICS[device]:
        for key, (delta, agree) in reference_parity(predictor(model_dir, device, numerics, CELL)).items():
            print(f"   {numerics:<5}{key:<13} max|Δlogit| {delta:.2e}   argmax agreement {100 * agree:8.4f}%")
            if numerics == "fp32" and (delta > TOLERANCE or agree < 1):
                passed = False
    print(f"   fp32 {'within' if passed else 'NOT within'} {TOLERANCE} with every argmax equal")
    return passed


def model_speed(model_dir: Path, device: str, tiles: list[int], most: int) -> None:
    print(f"2. model only, on {device}, all six heads, fp32, at most {most} tiles a batch")
    cuda = device == "cuda"
    for tile in tiles:
        p = predictor(model_dir, device, "fp32", tile, batch_size=most)
        p.predict(np.zeros((tile + 2 * CONTEXT, tile + 2 * CONTEXT, 3), np.uint8))  # warm-up; measures a tile's memory
        batch = p.tiles_per_batch(tile, tile)
        image = np.random.default_rng(0).integers(0, 256, (tile + 2 * CONTEXT, batch * tile + 2 * CONTEXT, 3), np.uint8)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        p.predict(image)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
        print(f"   tile {tile:>5} batch {batch:>2}: {batch * tile * tile / 1e6 / seconds:8.4f} output Mpx/s{peak}")


def end_to_end(model_dir: Path, device: str, quick: bool, workers: int) -> None:
    slide = fetch_cmu_small_region()
    view = open_slide(slide).at_mpp(0.5)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        mask = tissue_mask(view, "auto")
        given = None
        if quick:  # a few cells of tissue, so a CPU run stays short
            kept = np.zeros_like(mask.array)
            per_cell = int(CELL // mask.downsample)
            kept[6 * per_cell : 7 * per_cell, 5 * per_cell : 7 * per_cell] = True
            given = folder / "masks" / "mask.png"  # apart from the output, as a cohort's inputs must be
            given.parent.mkdir()
            Image.fromarray(kept.astype(np.uint8) * 255).save(given)
            mask = tissue_mask(view, given)
        model = {} if device == "cuda" else {"device": "cpu"}  # CUDA: the GPU worker infers
        processing = {"chunk": 2 * CELL, "tile": 2 * CELL} if quick else {}
        cohort = write_cohort(folder, slide, model_dir, workers, mask=given, processing=processing, **model)
        cells = plan_chunks(view, mask, chunk=processing.get("chunk", CHUNK)).cells
        run = sampled_run(run_command(cohort), gpu=device == "cuda")
    if run.returncode != 0:
        raise SystemExit(f"run failed ({run.returncode}):\n{run.output}")
    megapixels = cells * CELL**2 / 1e6
    print(f"3. end to end: cerberus-batch run, CMU-1-Small-Region, {cells} tissue cells ({megapixels:.2f} Mpx), "
          f"{workers} CPU workers{' + 1 GPU worker' if device == 'cuda' else ''}")  # fmt: skip
    print(f"   {run.seconds:.0f} s (with cluster start-up): {megapixels / run.seconds:.4f} output Mpx/s; "
          f"largest process peak RSS {max(run.rss.values()) / GB:.2f} GB")  # fmt: skip
    if run.gpu_utilisation:
        u = np.array(run.gpu_utilisation)
        print(f"   GPU utilisation over {u.size} samples: mean {u.mean():.0f}%, max {u.max():.0f}%; "
              f"GPU memory used max {max(run.gpu_memory_mib):.0f} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="small tiles and a few-cell region (for CPU tests)")
    parser.add_argument("--workers", type=int, default=2, help="CPU workers of the end-to-end run")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --device cpu")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_parity_model_dir(Path(scratch) / "model")
        passed = parity(model_dir, args.device)
        # Host memory bounds the batch too: the outputs of 16 tiles of 2016 px are 4 GB of float32.
        model_speed(model_dir, args.device, [CELL, 2 * CELL] if args.quick else [1008, 2016], 2 if args.quick else 16)
        end_to_end(model_dir, args.device, args.quick, args.workers)
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
