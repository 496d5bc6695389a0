"""One mpp rule (issue 24, item 2): a slide's own metadata wins; a cohort's `mpp:` (list, glob or manifest
column) stands in only where the metadata has none; `mpp_override:` replaces it; `validate` shows each
slide's mpp and where it came from; the no-mpp error names the fix of the cohort's own form."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.slides import open_slide
from helpers import write_cohort

CMU_MPP = 0.499  # CMU-1-Small-Region.svs's own metadata (Aperio MPP)


@pytest.fixture
def slides(tmp_path, cmu_slide) -> Path:
    """A folder with a slide whose metadata has an mpp (CMU-1-Small-Region) and a PNG crop of it, which has none."""
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copyfile(cmu_slide, folder / "cmu.svs")
    with open_slide(cmu_slide) as slide:
        Image.fromarray(slide.read_level(0, 600, 600, 1000, 800)).save(folder / "crop.png")
    return folder


def level0_mpp(path: Path) -> dict[str, tuple[float, str]]:
    found = {}
    for slide in load_cohort(path).slides:
        with slide.open() as opened:
            found[slide.id] = (opened.info.mpp[0], opened.info.mpp_source)
    return found


def validate(path: Path):
    return CliRunner().invoke(main, ["validate", str(path)], env={"COLUMNS": "250"})


def test_a_glob_mpp_is_a_fallback_and_the_metadata_wins(tmp_path, slides):
    path = write_cohort(tmp_path, {"glob": "slides/*", "mpp": 0.25})
    assert level0_mpp(path) == {"cmu": (CMU_MPP, "metadata"), "crop": (0.25, "fallback")}
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert re.search(r"cmu\s*│\s*0\.4990 \(metadata\)", result.output), result.output
    assert re.search(r"crop\s*│\s*0\.2500 \(fallback\)", result.output), result.output


def test_mpp_override_replaces_every_slides_metadata_when_asked(tmp_path, slides):
    path = write_cohort(tmp_path, {"glob": "slides/*", "mpp_override": 0.25})
    assert level0_mpp(path) == {"cmu": (0.25, "override"), "crop": (0.25, "override")}
    assert re.search(r"cmu\s*│\s*0\.2500 \(override\)", validate(path).output)


def test_tissue_area_keeps_the_metadatas_mpp_under_a_glob_mpp(tmp_path, slides):
    """The trap: a glob `mpp:` for the slides without one must not shrink the tissue of those with one."""
    with_fallback = validate(write_cohort(tmp_path, {"glob": "slides/*.svs", "mpp": 0.25})).output
    alone = validate(write_cohort(tmp_path, [{"path": "slides/cmu.svs"}])).output
    area = re.compile(r"cmu\s*│[^│]*│[^│]*│\s*([\d.]+)")
    assert area.search(with_fallback)[1] == area.search(alone)[1]
    assert float(area.search(alone)[1]) > 0.5


@pytest.mark.parametrize("form", ["list", "glob", "manifest"])
def test_the_no_mpp_error_names_the_fix_of_the_cohorts_form(tmp_path, slides, form):
    if form == "list":
        listed, fix = [{"path": "slides/crop.png"}], r"set `mpp:` on slides\.0 in .*cohort\.yaml"
    elif form == "glob":
        listed, fix = {"glob": "slides/*.png"}, r"set `mpp:` beside `glob:` in .*cohort\.yaml"
    else:
        (tmp_path / "slides.csv").write_text("path\nslides/crop.png\n")
        listed, fix = {"manifest": "slides.csv"}, r"fill its `mpp` column in .*slides\.csv"
    result = validate(write_cohort(tmp_path, listed))
    assert result.exit_code == 1
    problem = [line for line in result.output.splitlines() if line.startswith("PROBLEM crop:")]
    assert len(problem) == 1 and re.search(rf"has no microns-per-pixel metadata; {fix}$", problem[0]), result.output
    assert "--mpp-override" not in result.output


def test_a_manifest_column_gives_fallback_and_override(tmp_path, slides):
    (tmp_path / "slides.csv").write_text("path,mpp,mpp_override\nslides/cmu.svs,0.25,\nslides/crop.png,,0.3\n")
    assert level0_mpp(write_cohort(tmp_path, {"manifest": "slides.csv"})) == {"cmu": (CMU_MPP, "metadata"), "crop": (0.3, "override")}
