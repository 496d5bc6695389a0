"""A slide without tissue finishes with its NOTE and empty tables, and never stops another slide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.tables import read_table
from cerberus_batch.testing.slides import make_synthetic_slide
from conftest import mask_file
from helpers import write_cohort

pytestmark = pytest.mark.e2e  # each runs a two-slide cohort through the CLI


def run(cohort: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"],
                          capture_output=True, text=True, timeout=600)


SETTINGS = {"processing": {"chunk": 432}, "cluster": {"workers": 1, "dashboard_address": ":0"}}


def assert_blank_slide_done_beside_a_good_one(cohort: Path, blank: str) -> None:
    done = run(cohort)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]  # a slide with no tissue is done, not failed
    assert "NOTE" in said and blank in said and "no tissue" in said, said[-3000:]
    assert "Warning" not in said, said[-3000:]  # the NOTE says it, once
    output = cohort.parent / "out"
    report = json.loads(OutputLayout(output).run_report.read_text())
    assert report["status"] == "ok"
    assert report["slides"][blank]["status"] == "done" and report["slides"][blank]["chunks"] == 0
    assert "no tissue" in report["slides"][blank]["note"]
    assert len(read_table(output, "nuclei", ["good"])) > 0
    # The blank slide has its (empty) tables and summary row, written the way every slide's are.
    assert len(read_table(output, "nuclei", [blank])) == 0
    summary = pd.read_csv(OutputLayout(output).summaries[1]).set_index("slide_id")
    assert summary.loc[blank, "nuclei_count"] == 0 and summary.loc["good", "nuclei_count"] > 0
    # A rerun has nothing left to do and says so for both slides.
    again = run(cohort)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert json.loads(OutputLayout(output).run_report.read_text())["status"] == "ok"


def test_a_slide_with_an_all_black_mask_finishes_with_a_note_and_the_other_slide_its_tables(tmp_path, cmu_slide):
    make_synthetic_slide(tmp_path / "slides" / "good.svs", size=(800, 640), seed=2)
    Image.fromarray(np.zeros((297, 222), np.uint8)).save(mask_file(tmp_path, "blank.png"))  # CMU-1-Small-Region is 2220 x 2967 px
    cohort = write_cohort(tmp_path, [{"path": str(cmu_slide), "id": "blank", "mask": "masks/blank.png"}, {"path": "slides/good.svs"}], **SETTINGS)
    assert_blank_slide_done_beside_a_good_one(cohort, "blank")


def test_a_white_slide_with_the_automatic_mask_finishes_with_a_note(tmp_path):
    make_synthetic_slide(tmp_path / "slides" / "good.svs", size=(800, 640), seed=2)
    Image.fromarray(np.full((640, 800, 3), 255, np.uint8)).save(tmp_path / "slides" / "white.png")
    cohort = write_cohort(tmp_path, [{"path": "slides/white.png", "mpp": 0.5}, {"path": "slides/good.svs"}], **SETTINGS)
    assert_blank_slide_done_beside_a_good_one(cohort, "white")
