"""The accuracy figures of README.md's Benchmarks table, each measured in this run.

    python benchmarks/figures.py                      # all three sections
    python benchmarks/figures.py parity               # (a) parity with the reference logits (~40 s)
    python benchmarks/figures.py tile-vs-patch        # (b) tile vs patch on CMU-1-Small-Region (~3 min)
    python benchmarks/figures.py stain-f1             # (c) stain baseline vs synthetic ground truth (~45 s)

(a) The deterministic-weights network (tests/parity_model.py) on the two crops of
    tests/data/forward_reference.npz, compared where the tests compare (the centre 144 px of each
    448 px logit map; Patch-Class as is): max |Δ logit| per head and argmax agreement, for the raw
    network (`load_model`) and for the served model (`CerberusPredictor`: BatchNorms folded,
    channels-last on CPU); the served probabilities vs the softmax of the reference logits (what
    tests/test_model_predictor.py asserts); and folded (alone, and as served) vs raw logits.
(b) `CerberusPredictor` in tile mode vs patch mode (the reference computation) on a real crop of
    CMU-1-Small-Region.svs (fetched like the tests do, tests/conftest.py), starting at the crop origin
    tests/test_model_predictor.py uses: max |Δp| per head, class-map (argmax) agreement per TYPE head,
    and whether the tissue type (Patch-Class argmax) of every cell is identical.
(c) The stain baseline's nuclei through the pipeline on the synthetic slide vs its ground truth,
    detection at IoU ≥ 0.5: the computation of tests/test_instances_pipeline.py's
    test_stain_nuclei_match_ground_truth (imported and called here; it prints the line).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the parity model, the CMU slide fetcher and the tests' own code

from conftest import fetch_cmu_small_region  # noqa: E402
from parity_model import make_parity_model_dir  # noqa: E402

from cerberus_batch.grid import CELL, CONTEXT  # noqa: E402
from cerberus_batch.model import CerberusPredictor, InferenceOptions, load_model  # noqa: E402
from cerberus_batch.model.fusion import fuse_batchnorms  # noqa: E402

DATA = ROOT / "tests" / "data"
CROP = slice(CONTEXT, CONTEXT + CELL)  # the reference keeps the centre 144 px of a 448 patch
PATCH_CLASS = "Patch-Class"
SECTIONS = ("parity", "tile-vs-patch", "stain-f1")


def _row(label: str, key: str, delta: float, agree: np.ndarray | None = None) -> str:
    line = f"  {label:<34}{key:<13} max|Δ| {delta:.2e}"
    if agree is not None:
        line += f"   argmax equal {100 * agree.mean():8.4f}% ({int(agree.sum())}/{agree.size})"
    return line


def _logits(model: torch.nn.Module, images: np.ndarray, memory_format=torch.contiguous_format, **kw) -> dict:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous(memory_format=memory_format)
    with torch.inference_mode():
        return {key: value.float().numpy() for key, value in model(tensor, **kw).items()}


def _compare(label: str, logits: dict, reference: dict) -> None:
    for key, value in logits.items():
        got = value[:, :, 0, 0] if key == PATCH_CLASS else value[:, :, CROP, CROP]
        print(_row(label, key, float(np.abs(got - reference[key]).max()), got.argmax(1) == reference[key].argmax(1)))


def parity(model_dir: Path) -> None:
    from test_model_predictor import _softmax  # the test's own softmax of the reference logits

    with np.load(DATA / "forward_reference.npz") as npz:
        reference = dict(npz)
    images = reference["images"]
    print(f"(a) parity with the reference logits: tests/data/forward_reference.npz, {len(images)} crops of "
          f"448 px, centre {CELL} px compared; torch {torch.__version__}, {torch.get_num_threads()} threads")
    raw = _logits(load_model(model_dir, device="cpu"), images)
    _compare("raw network vs reference", raw, reference)

    folded = _logits(fuse_batchnorms(load_model(model_dir, device="cpu")), images)  # the fold alone
    for key, value in folded.items():
        print(_row("folded BatchNorms vs raw network", key, float(np.abs(value - raw[key]).max())))

    predictor = CerberusPredictor(model_dir, options=InferenceOptions(device="cpu"))  # as served: BatchNorms folded, channels-last
    served = _logits(predictor.model, images, predictor.memory_format, per_cell=True)
    _compare("served model vs reference", served, reference)
    for key, value in served.items():
        print(_row("served model vs raw network", key, float(np.abs(value - raw[key]).max())))

    worst: dict[str, float] = {}
    for index, image in enumerate(images):
        for key, got in predictor.predict(image).items():
            expected = _softmax(reference[key][index])
            if key.endswith("-INST"):
                expected = expected[1:3]
            elif key == PATCH_CLASS:
                expected = expected[:, None, None]
            worst[key] = max(worst.get(key, 0.0), float(np.abs(got - expected).max()))
    for key, delta in worst.items():
        print(_row("served probabilities vs reference", key, delta))
    print("  (tests assert atol=1e-3 on these logits and probabilities, and equal TYPE argmaxes)")


def tile_vs_patch(model_dir: Path, cells: int, tiles: list[int]) -> None:
    import tiffslide
    from test_model_predictor import ORIGIN  # the crop origin the tile-vs-patch test uses

    slide = fetch_cmu_small_region()
    side = cells * CELL + 2 * CONTEXT
    with tiffslide.TiffSlide(slide) as opened:
        region = np.asarray(opened.read_region(ORIGIN, 0, (side, side)).convert("RGB"))
    print(f"(b) tile vs patch mode on {slide.name}, level-0 origin {ORIGIN}, output {cells}x{cells} cells "
          f"({cells * CELL}x{cells * CELL} px), parity weights, CPU")
    started = time.perf_counter()
    patch = CerberusPredictor(model_dir, options=InferenceOptions(mode="patch", device="cpu")).predict(region)
    print(f"  patch mode: {time.perf_counter() - started:.0f} s")
    for tile in tiles:
        started = time.perf_counter()
        result = CerberusPredictor(model_dir, options=InferenceOptions(tile=tile, device="cpu")).predict(region)
        print(f"  tile {tile}: {time.perf_counter() - started:.0f} s")
        worst = 0.0
        for key, expected in patch.items():
            delta = float(np.abs(result[key] - expected).max())
            worst = max(worst, delta)
            agree = result[key].argmax(0) == expected.argmax(0) if not key.endswith("-INST") else None
            print(_row(f"tile {tile} vs patch, probability", key, delta, agree))
        tissue = bool((result[PATCH_CLASS].argmax(0) == patch[PATCH_CLASS].argmax(0)).all())
        types = [key for key in patch if key.endswith("-TYPE")]
        agree = np.concatenate([(result[k].argmax(0) == patch[k].argmax(0)).ravel() for k in types])
        print(f"  tile {tile} vs patch: max|Δp| {worst:.2e} over all heads; class maps ({', '.join(types)}) "
              f"{100 * agree.mean():.4f}% equal ({int(agree.sum())}/{agree.size} px); tissue type of every "
              f"cell identical: {tissue} ({patch[PATCH_CLASS][0].size} cells)")


def stain_f1() -> None:
    from distributed import LocalCluster
    from test_instances_pipeline import run, test_stain_nuclei_match_ground_truth

    from cerberus_batch.testing.slides import make_synthetic_slide

    print("(c) stain baseline nuclei vs synthetic ground truth (seed 0, chunk 1008, 2 workers), IoU >= 0.5")
    with tempfile.TemporaryDirectory() as scratch:
        synthetic = make_synthetic_slide(Path(scratch) / "slides" / "synthetic.svs", seed=0)
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
            output = run(Path(scratch) / "1008", [{"path": str(synthetic.path), "id": "synthetic"}], cluster,
                         processing={"chunk": 1008})
        print("  ", end="", flush=True)
        test_stain_nuclei_match_ground_truth(synthetic, {1008: output})  # prints precision, recall, F1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--cells", type=int, default=5, help="(b) output cells per side (patch mode: 4-6 s per cell on 2 CPU cores)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[1008], help="(b) tile sizes (288: four tiles of three shapes)")
    args = parser.parse_args()
    sections = args.sections or list(SECTIONS)
    if set(sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(set(sections) - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_parity_model_dir(Path(scratch) / "model")
        if "parity" in sections:
            parity(model_dir)
        if "tile-vs-patch" in sections:
            tile_vs_patch(model_dir, args.cells, args.tiles)
    if "stain-f1" in sections:
        stain_f1()


if __name__ == "__main__":
    main()
