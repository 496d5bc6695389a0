"""One tissue area per type on CMU-1-Small-Region: the summary's `tissue_<type>_mm2` against the tissue polygons.

    python benchmarks/bench_tissue_area.py [--parity-box 600]

Runs the slide (fetched like the tests do, tests/conftest.py) through `cerberus-batch run` with the
stain model (whole slide, automatic mask) and, unless `--parity-box 0`, the parity Cerberus model
(tests/parity_model.py) on a given mask keeping a `--parity-box`-px square of level 0 (the CPU run
stays short). Prints, per run: the mask's tissue area (`tissue_mm2`), the summary's area per tissue type,
their sum without background, the tissue polygons' area (sum of the tissue table's `area_um2`) and
the difference; the two agree when every density divides by the area its objects lie in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from distributed import LocalCluster
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CMU slide fetcher and the parity model

from conftest import fetch_cmu_small_region  # noqa: E402
from parity_model import make_parity_model_dir  # noqa: E402

from cerberus_batch.pipeline.config import load_cohort  # noqa: E402
from cerberus_batch.pipeline.run import run_cohort  # noqa: E402
from cerberus_batch.storage.layout import OutputLayout  # noqa: E402
from cerberus_batch.storage.tables import read_table  # noqa: E402
from cerberus_batch.vocabulary import TISSUE  # noqa: E402

MASK_SCALE = 10  # the given mask is the slide at 1/10 scale
BACKGROUND = TISSUE.classes[0]


def run(folder: Path, slide: Path, model: dict, processing: dict, mask: str | None) -> Path:
    entry = {"path": str(slide), "id": "cmu", **({"mask": mask} if mask else {})}
    body = {"name": "tissue-area", "output": "out", "slides": [entry], "model": model, "processing": processing}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(body))
    cohort = load_cohort(folder / "cohort.yaml")
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster:
        report = run_cohort(cohort, show_progress=False, cluster=cluster, fresh=True)
    assert report.status == "ok", report.slides
    return cohort.output


def show(label: str, output: Path) -> None:
    row = pd.read_parquet(OutputLayout(output).summaries[0]).set_index("slide_id").loc["cmu"]
    types = {c[len("tissue_"):-len("_mm2")]: float(row[c]) for c in row.index
             if c.startswith("tissue_") and c.endswith("_mm2") and c != "tissue_mm2"}
    typed = sum(mm2 for name, mm2 in types.items() if name != BACKGROUND)
    polygons = float(read_table(output, TISSUE.name, ["cmu"])["area_um2"].sum()) / 1e6
    said = ", ".join(f"{name} {mm2:.4f}" for name, mm2 in sorted(types.items()))
    print(f"{label}: mask tissue_mm2 {row['tissue_mm2']:.4f}; summary per type: {said}")
    print(f"{label}: summary types without {BACKGROUND} {typed:.6f} mm², tissue polygons {polygons:.6f} mm², "
          f"difference {typed - polygons:+.2e} mm²")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parity-box", type=int, default=600, help="level-0 side of the parity run's masked square (0: skip)")
    args = parser.parse_args()
    slide = fetch_cmu_small_region()
    with tempfile.TemporaryDirectory() as tmp:
        stain = Path(tmp) / "stain"
        stain.mkdir()
        show("stain model, whole slide", run(stain, slide, {"kind": "stain"}, {"chunk": 1008}, None))
        if args.parity_box:
            parity = Path(tmp) / "parity"
            (parity / "masks").mkdir(parents=True)
            side = args.parity_box // MASK_SCALE
            mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
            mask[130:130 + side, 80:80 + side] = 255
            Image.fromarray(mask).save(parity / "masks" / "mask.png")
            model = {"kind": "cerberus", "weights": str(make_parity_model_dir(Path(tmp) / "model"))}
            output = run(parity, slide, model, {"chunk": 432, "tile": 432, "tissue_mask": "given"}, "masks/mask.png")
            show(f"parity Cerberus, {args.parity_box}-px square", output)


if __name__ == "__main__":
    main()
