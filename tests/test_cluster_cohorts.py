"""The example cluster cohort files, and the small cohort the cluster tests run.

`small_cohort` and `output_files` are shared by the other test_cluster*/test_dashboard files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cerberus_batch.pipeline.config import CohortFile
from cerberus_batch.testing.slides import make_synthetic_slide

CONFIGS = Path(__file__).parent.parent / "configs"


def small_cohort(folder: Path, cluster: dict, output: str = "out") -> Path:
    """A one-slide stain-model cohort: a 2000×1600 synthetic slide (`folder/slides/synthetic.svs`, unless
    one is there already) cut into six 432 px chunks."""
    slide = folder / "slides" / "synthetic.svs"
    if not slide.exists():
        slide.parent.mkdir(exist_ok=True)
        make_synthetic_slide(slide, size=(2000, 1600), seed=1)
    body = {
        "name": f"cluster-{cluster.get('kind', 'local')}",
        "output": output,
        "slides": [{"path": f"slides/{slide.name}", "id": "synthetic"}],
        "model": {"kind": "stain"},
        "processing": {"chunk": 432},
        "cluster": cluster,
    }
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def output_files(output: Path, folders: tuple[str, ...] = ("maps", "tables", "plans", "masks")) -> dict[str, bytes]:
    """Every result file of a run, by relative path (not timings): two runs must match byte for byte."""
    return {str(p.relative_to(output)): p.read_bytes() for f in folders for p in sorted((output / f).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["local", "slurm", "kubernetes", "address"])
def test_example_cluster_cohorts_are_valid_and_use_their_kind(kind):
    # Their slides live on a cluster's shared storage, so only the file's structure is checked here.
    cohort = CohortFile.model_validate(yaml.safe_load((CONFIGS / f"cluster-{kind}.yaml").read_text()))
    assert cohort.cluster.kind == kind
