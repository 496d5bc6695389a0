"""CPU inference paths of CerberusPredictor, measured in one run on one tile of real H&E (CMU-1-Small-Region)
with the parity weights: throughput, peak RSS, and max |Δlogit| against the reference logits.

Paths (each in a fresh subprocess, warmed up once, then timed):
- `today`: the eager path before issue 13: BatchNorms folded, channels-last, every decoder and head on
  the whole tile with its context, the output cut out afterwards.
- `default`: what CerberusPredictor runs now: decoders and heads only where the output needs them.
- `bf16`: the default under oneDNN bf16 autocast (`amp: bf16`, opt-in: numbers differ).
- `patch`: the reference's 448-px patches at stride 144 (`mode: patch`), timed on a strip of cells.
- `compile`: `torch.compile` of the whole-tile forward (not run unless asked: minutes of compiling).
- `onnx`: the whole-tile network exported with `torch.onnx` and run by ONNX Runtime (not run unless
  asked; `pip install -e ".[bench]"` brings onnxruntime and the exporter's onnx/onnxscript).

    python benchmarks/bench_model.py                       # tile 1008: today, default, bf16, patch
    python benchmarks/bench_model.py --tile 432 --paths today default compile onnx
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
sys.path.insert(0, str(ROOT / "tests"))  # the CMU slide fetcher, the parity model directory maker

from conftest import fetch_cmu_small_region  # noqa: E402
from parity_model import DATA, make_parity_model_dir  # noqa: E402

from cerberus_batch.grid import CELL, CONTEXT  # noqa: E402
from cerberus_batch.model import CerberusPredictor, InferenceOptions  # noqa: E402
from cerberus_batch.model.activation import probabilities  # noqa: E402
from cerberus_batch.model.naming import PATCH_CLASS  # noqa: E402

TOLERANCE = 1e-3  # max |Δlogit| the parity fixture allows (shared/parity README)
ORIGIN = (0, 400)  # level-0 (x, y) of the tile's input: tissue and glass
PATCH_CELLS = 6  # cells of the strip patch mode is timed on


def reference_parity(predictor: CerberusPredictor, logits=None) -> dict[str, tuple[float, float]]:
    """Per head: max |Δlogit| against forward_reference.npz and the share of equal argmaxes.

    `logits(images)` computes the logits (default: the predictor's own path)."""
    with np.load(DATA / "forward_reference.npz") as npz:
        reference = dict(npz)
    got = (logits or predictor.logits)(reference["images"])
    out = {}
    for key, value in got.items():
        value = value[:, :, 0, 0] if key == PATCH_CLASS else value
        out[key] = float(np.abs(value - reference[key]).max()), float((value.argmax(1) == reference[key].argmax(1)).mean())
    return out


def _cpu_seconds() -> float:
    """User + system time of this process: on a shared machine it varies less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _whole_tile(forward):
    """A path that computes every head on the whole tile (context included) and cuts the output
    afterwards, as `today` did; `forward(NCHW float tensor)` gives {output key: logits}."""

    def logits(images: np.ndarray) -> dict[str, np.ndarray]:
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            raw = forward(tensor)
        return {k: np.asarray(v if k == PATCH_CLASS else v[..., CONTEXT:-CONTEXT, CONTEXT:-CONTEXT], np.float32) for k, v in raw.items()}

    def predict(image: np.ndarray) -> None:
        for key, value in logits(image[None]).items():
            probabilities(key, torch.from_numpy(value)).numpy()

    return logits, predict


def _eager(model, compiled: bool = False):
    forward = torch.compile(model) if compiled else model
    return lambda tensor: {k: v.float().numpy() for k, v in forward(tensor, per_cell=True).items()}


def _onnx(model, folder: Path):
    """The whole-tile network exported with torch.onnx (dynamo) and run by ONNX Runtime's CPU provider,
    one export per input shape."""
    import onnxruntime

    class Outputs(torch.nn.Module):  # ONNX graphs return tuples, not dicts
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(x, per_cell=True)
            return tuple(out[key] for key in keys)

    keys = sorted(model.output_classes)
    sessions = {}

    def forward(tensor: torch.Tensor) -> dict[str, np.ndarray]:
        shape = tuple(tensor.shape)
        if shape not in sessions:
            path = folder / f"cerberus-{'x'.join(map(str, shape))}.onnx"
            torch.onnx.export(Outputs().eval(), (tensor.contiguous(),), path, dynamo=True, input_names=["images"])
            sessions[shape] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return dict(zip(keys, sessions[shape].run(None, {"images": tensor.contiguous().numpy()})))

    return forward


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One path in this process."""
    image = np.load(args.image)
    mode = "patch" if args.path == "patch" else "tile"
    options = InferenceOptions(mode=mode, tile=args.tile, device="cpu", amp="bf16" if args.path == "bf16" else None)
    predictor = CerberusPredictor(args.model_dir, options=options)
    if mode == "patch":  # a strip of cells stands for the tile: patch mode costs the same per cell anywhere
        image = image[: CELL + 2 * CONTEXT, : PATCH_CELLS * CELL + 2 * CONTEXT]
    logits, predict = predictor.logits, predictor.predict
    if args.path in ("today", "compile"):
        logits, predict = _whole_tile(_eager(predictor.model, compiled=args.path == "compile"))
    elif args.path == "onnx":
        logits, predict = _whole_tile(_onnx(predictor.model, args.image.parent))
    start = time.perf_counter()
    predict(image)  # warm-up (and for compile: compiling)
    warm_up = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for _ in range(args.repeats):
        predict(image)
    seconds, cpu_seconds = (time.perf_counter() - start) / args.repeats, (_cpu_seconds() - cpu_start) / args.repeats
    parity = reference_parity(predictor, logits)
    return {
        "seconds": seconds, "cpu_seconds": cpu_seconds, "warm_up": warm_up, "megapixels": (image.shape[0] - 2 * CONTEXT) * (image.shape[1] - 2 * CONTEXT) / 1e6,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "delta": max(d for d, _ in parity.values()), "argmax": min(a for _, a in parity.values()),
    }


def run_path(args: argparse.Namespace, image: Path, path: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", path, "--image", str(image), "--model-dir", str(args.model_dir),
               "--tile", str(args.tile), "--repeats", str(args.repeats)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path}: worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=1008, help="output tile side in px (multiple of 144)")
    parser.add_argument("--paths", nargs="+", default=["today", "default", "bf16", "patch"],
                        choices=["today", "default", "bf16", "patch", "compile", "onnx"])
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after the warm-up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.path = args.worker
        print(json.dumps(measure(args)))
        return
    import tiffslide

    side = args.tile + 2 * CONTEXT
    with tempfile.TemporaryDirectory() as scratch, tiffslide.TiffSlide(fetch_cmu_small_region()) as slide:
        args.model_dir = make_parity_model_dir(Path(scratch) / "model")
        image = Path(scratch) / "tile.npy"
        np.save(image, np.asarray(slide.read_region(ORIGIN, 0, (side, side)).convert("RGB")))
        results = {path: run_path(args, image, path) for path in args.paths}
    print(f"one {args.tile}-px tile (+{CONTEXT} px context) of CMU-1-Small-Region, parity weights, all six heads, "
          f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} timed pass(es)")  # fmt: skip
    print(f"{'path':<9}{'out Mpx':>8}{'warm-up s':>10}{'s':>7}{'Mpx/s':>8}{'CPU s':>7}{'peak MiB':>10}{'max|Δlogit|':>13}{'argmax':>9}")
    for path, r in results.items():
        print(f"{path:<9}{r['megapixels']:>8.3f}{r['warm_up']:>10.1f}{r['seconds']:>7.2f}{r['megapixels'] / r['seconds']:>8.4f}"
              f"{r['cpu_seconds']:>7.1f}{r['peak_mib']:>10.0f}{r['delta']:>13.2e}{100 * r['argmax']:>8.3f}%")  # fmt: skip
    for base in ("today", "patch"):  # each path's output Mpx per second and per CPU second, against these
        if base not in results:
            continue
        b = results[base]
        for path, r in results.items():
            if path != base and not (base == "patch" and path != "default"):
                wall = (r["megapixels"] / r["seconds"]) / (b["megapixels"] / b["seconds"])
                cpu = (r["megapixels"] / r["cpu_seconds"]) / (b["megapixels"] / b["cpu_seconds"])
                within = "within" if r["delta"] <= TOLERANCE else "NOT within"
                print(f"{path} vs {base}: {wall:.2f}x wall, {cpu:.2f}x CPU time per output Mpx; "
                      f"max|Δlogit| {r['delta']:.2e} ({within} {TOLERANCE})")  # fmt: skip


if __name__ == "__main__":
    main()
