"""Helpers the test modules share: writing a cohort file, running it on a given cluster, comparing outputs."""

from __future__ import annotations

from pathlib import Path

import yaml

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.testing.slides import make_synthetic_slide

CONFIGS = Path(__file__).parent.parent / "configs"


def write_cohort(folder: Path, slides: list[dict] | dict, *, name: str = "test", output: str = "out",
                 model: dict | None = None, file: str = "cohort.yaml", **sections: object) -> Path:
    """`folder/file` (folder made if missing): the stain model unless `model` says otherwise; `sections` are
    the other top-level keys (processing, cluster, ...), written in the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "output": output, "slides": slides, "model": model or {"kind": "stain"}, **sections}
    path = folder / file
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_ok(cohort: Path, cluster) -> Path:
    """Runs the cohort file in this process on `cluster`; every slide must succeed. Returns the output folder."""
    loaded = load_cohort(cohort)
    report = run_cohort(loaded, show_progress=False, cluster=cluster)
    assert report.status == "ok", report.slides
    return loaded.output


def small_cohort(folder: Path, cluster: dict, output: str = "out") -> Path:
    """A one-slide stain-model cohort: a 2000×1600 synthetic slide (`folder/slides/synthetic.svs`, unless
    one is there already) cut into six 432 px chunks."""
    slide = folder / "slides" / "synthetic.svs"
    if not slide.exists():
        slide.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic_slide(slide, size=(2000, 1600), seed=1)
    return write_cohort(folder, [{"path": f"slides/{slide.name}", "id": "synthetic"}], name=f"cluster-{cluster.get('kind', 'local')}",
                        output=output, file=f"{output}.yaml", processing={"chunk": 432}, cluster=cluster)


def output_files(output: Path, folders: tuple[str, ...] = ("maps", "tables", "plans", "masks")) -> dict[str, bytes]:
    """Every result file of a run, by relative path (not timings): two runs must match byte for byte."""
    return {str(p.relative_to(output)): p.read_bytes() for f in folders for p in sorted((output / f).rglob("*")) if p.is_file()}
