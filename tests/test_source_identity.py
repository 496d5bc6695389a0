"""A slide's identity (what marks it replaced): a DICOM slide's SOP instance UIDs, whatever its files' dates;
and a worker that keeps slides open reopens a replaced one instead of reading it through the old handle."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tiffslide
import yaml
from click.testing import CliRunner
from distributed import LocalCluster
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.pipeline.config import ModelSpec, ProcessingSpec, SlideEntry, load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.pipeline.work import plan_slide_task
from cerberus_batch.slides import SlideError
from cerberus_batch.slides.location import Location
from cerberus_batch.storage.zarr_maps import open_slide_maps
from cerberus_batch.testing.slides import make_synthetic_slide
from conftest import mask_file
from test_slide_readers import convert_to_dicom

pytestmark = pytest.mark.e2e  # each runs a cohort


def uids_digest(folder: Path) -> dict[str, object]:
    uids = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in folder.iterdir())
    return {"sop_instances": len(uids), "sop_instance_uids_sha256": hashlib.sha256("\n".join(uids).encode()).hexdigest()}


def test_a_dicom_slide_is_known_by_its_sop_instance_uids(tmp_path, cmu_slide):
    slides = tmp_path / "slides"
    first, second = convert_to_dicom(cmu_slide, tmp_path / "first"), convert_to_dicom(cmu_slide, tmp_path / "second")
    folder = slides / "cmu"
    folder.mkdir(parents=True)
    for instance in first:
        shutil.copy(instance, folder)
    mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
    mask[120:160, 90:130] = 255
    Image.fromarray(mask).save(mask_file(tmp_path))
    body = {"name": "dicom", "output": "out", "model": {"kind": "stain"},
            "slides": [{"path": str(folder), "id": "cmu", "mask": "masks/mask.png"}],
            "processing": {"chunk": 432, "tissue_mask": "given"}}
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(body))

    def run():
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            report = run_cohort(load_cohort(tmp_path / "cohort.yaml"), show_progress=False, cluster=cluster)
        assert report.status == "ok", report.slides
        return report.slides["cmu"], dict(open_slide_maps(tmp_path / "out" / "maps" / "cmu").attrs)["source"]

    done, source = run()
    assert done.chunks_computed == done.chunks > 0
    assert source == uids_digest(tmp_path / "first")
    shown = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["inspect", str(folder)])  # rich reads its width there
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in shown.output.splitlines() if line.count("│") == 3}
    assert rows["identity"] == ", ".join(f"{key} {value}" for key, value in source.items()) and rows["reader"] == "dicom", rows
    # The same instances copied again (new dates, a new folder mtime): the same slide, resumed.
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "first", folder)
    resumed, _ = run()
    assert resumed.chunks_skipped == resumed.chunks
    # Another conversion of the scan (same pixels, new UIDs), as a re-export from the archive gives: recomputed.
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "second", folder)
    redone, source = run()
    assert redone.chunks_computed == redone.chunks > 0
    assert source == uids_digest(tmp_path / "second") != uids_digest(tmp_path / "first")


def test_a_worker_reopens_a_slide_replaced_under_the_same_name(tmp_path, cmu_slide):
    folder = tmp_path / "slides"
    folder.mkdir()
    path = folder / "slide.svs"
    shutil.copy(cmu_slide, path)
    slide = SlideEntry(id="s", path=Location.parse(path))
    model, processing = ModelSpec(kind="stain"), ProcessingSpec(chunk=1008, tissue_mask="none")
    output = tmp_path / "out"
    plan_slide_task(slide, model, processing, output)
    assert open_slide_maps(output / "maps" / "s").attrs["slide_dimensions"] == [2220, 2967]
    # In the same process (a long-lived worker, its open slides cached), the file is replaced by another slide.
    replacement = make_synthetic_slide(tmp_path / "other" / "slide.svs", size=(1500, 1100)).path
    shutil.copy(replacement, path)
    assert tiffslide.TiffSlide(path).dimensions == (1500, 1100)
    plan_slide_task(slide, model, processing, output)
    assert open_slide_maps(output / "maps" / "s").attrs["slide_dimensions"] == [1500, 1100]


def test_a_missing_local_slide_is_file_not_found_at_planning(tmp_path):
    missing = tmp_path / "slides" / "gone.svs"  # listed, then deleted before its plan task ran
    with pytest.raises(SlideError) as refused:
        plan_slide_task(SlideEntry(id="gone", path=Location.parse(missing)), ModelSpec(kind="stain"), ProcessingSpec(), tmp_path / "out")
    assert str(refused.value) == f"{missing}: file not found"
