"""End to end on a real distributed.LocalCluster: cohort file → Zarr maps, resume, isolation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from cerberus_batch.cli import main
from cerberus_batch.grid import CELL
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.quantisation import dequantise
from cerberus_batch.slides import ChunkPlan, open_slide, plan_chunks, tissue_mask
from cerberus_batch.storage.zarr_maps import map_arrays
from cerberus_batch.tasks.infer import pool2, read_chunk
from conftest import mask_file
from helpers import write_cohort

pytestmark = pytest.mark.e2e

STEP = 1 / 255 + 1e-6  # one uint8 quantisation step


def chunk_with_tissue(output: Path, slide_id: str):
    """A kept chunk of the slide's saved plan with the fewest empty cells, and its inferred-pixel mask
    (pixels past the slide, in the last cells, are background like those of empty cells)."""
    plan = ChunkPlan.from_json((output / "plans" / f"{slide_id}.json").read_text())
    chunk = min(plan.chunks, key=lambda c: (len(c.empty_cells), c.index))
    inferred = np.zeros((chunk.h, chunk.w), bool)
    inferred[: plan.shape[0] - chunk.y, : plan.shape[1] - chunk.x] = True
    for row, col in chunk.empty_cells:
        inferred[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = False
    return (chunk.x, chunk.y, chunk.w, chunk.h), inferred


def test_stain_model_on_real_slide_matches_direct_model_call(tmp_path, cluster, cmu_slide):
    cohort = load_cohort(write_cohort(tmp_path, [{"path": str(cmu_slide), "id": "cmu"}], processing={"chunk": 1008}))
    report = run_cohort(cohort, show_progress=False, cluster=cluster)
    assert report.status == "ok", report.slides
    out = cohort.output
    group = zarr.open_group(out / "maps" / "cmu", mode="r")
    assert group.attrs["mpp"] == 0.499 and group.attrs["model_kind"] == "stain"  # native level: its true mpp
    assert "multiscales" in group["nuclei_prob"].attrs["ome"]  # each map an OME-NGFF image
    maps = map_arrays(group)
    view = open_slide(cmu_slide).at_mpp(0.5)
    h, w = view.shape
    assert maps["nuclei_prob"].shape == (2, -(-h // CELL) * CELL, -(-w // CELL) * CELL)

    from cerberus_batch.model.stain import StainPredictor

    (x, y, cw, ch), inferred = chunk_with_tissue(out, "cmu")
    direct = StainPredictor().predict(read_chunk(view.read, x, y, cw, ch))
    stored = dequantise(maps["nuclei_prob"][:, y : y + ch, x : x + cw])
    assert np.abs(stored - direct["Nuclei-INST"])[:, inferred].max() <= STEP
    assert (stored[:, ~inferred] == 0).all()
    classes = maps["nuclei_class"][y : y + ch, x : x + cw]
    assert (classes == direct["Nuclei-TYPE"].argmax(0))[inferred].mean() > 0.999
    assert (out / "masks" / "cmu.png").is_file()


def test_cerberus_parity_weights_on_a_small_region(tmp_path, cluster, cmu_slide, parity_model_dir):
    # A given tissue mask keeps only a small box, so the CPU run stays short.
    mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
    mask[130:150, 100:120] = 255
    Image.fromarray(mask).save(mask_file(tmp_path))
    cohort = load_cohort(
        write_cohort(
            tmp_path,
            [{"path": str(cmu_slide), "id": "cmu", "mask": "masks/mask.png"}],
            model={"kind": "cerberus", "weights": str(parity_model_dir)},
            processing={"chunk": 432, "tile": 432, "tissue_mask": "given"},
        )
    )
    report = run_cohort(cohort, show_progress=False, cluster=cluster)
    assert report.status == "ok", report.slides
    assert 1 <= report.slides["cmu"].chunks <= 4
    maps = map_arrays(zarr.open_group(cohort.output / "maps" / "cmu", mode="r"))
    assert set(maps) >= {"nuclei_prob", "nuclei_class", "gland_prob", "gland_class", "lumen_prob", "tissue_class", "tissue_prob"}

    from cerberus_batch.model import CerberusPredictor, InferenceOptions

    (x, y, w, h), inferred = chunk_with_tissue(cohort.output, "cmu")
    view = open_slide(cmu_slide).at_mpp(0.5)
    direct = CerberusPredictor(parity_model_dir, options=InferenceOptions(tile=432)).predict(read_chunk(view.read, x, y, w, h))
    nuclei = dequantise(maps["nuclei_prob"][:, y : y + h, x : x + w])
    gland = dequantise(maps["gland_prob"][:, y // 2 : (y + h) // 2, x // 2 : (x + w) // 2])
    assert inferred.any()
    assert np.abs(nuclei - direct["Nuclei-INST"])[:, inferred].max() <= STEP
    assert np.abs(gland - pool2(direct["Gland-INST"]))[:, inferred[::2, ::2]].max() <= STEP
    cells = dequantise(maps["tissue_prob"][:, y // CELL : (y + h) // CELL, x // CELL : (x + w) // CELL])
    assert np.abs(cells - direct["Patch-Class"])[:, inferred[::CELL, ::CELL]].max() <= STEP


def cli_run(cohort: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs,
    )


def map_files(output: Path) -> dict[str, bytes]:
    root = output / "maps"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_and_resume_computes_only_the_rest_and_gives_identical_maps(tmp_path, cmu_slide):
    slides = [{"path": str(cmu_slide), "id": "cmu"}]
    settings = {"processing": {"chunk": 432}, "cluster": {"workers": 2, "dashboard_address": ":0"}}
    killed = write_cohort(tmp_path / "killed", slides, **settings)
    whole = write_cohort(tmp_path / "whole", slides, **settings)

    first = cli_run(killed)
    ledger = tmp_path / "killed" / "out" / "ledger" / "cmu"
    deadline = time.time() + 240
    while len(list(ledger.glob("chunk-*.done"))) < 3:
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group: client, scheduler and workers
    first.wait()
    done_before = len(list(ledger.glob("chunk-*.done")))

    second = cli_run(killed)
    assert second.wait(timeout=600) == 0, second.communicate()[0][-2000:]
    report = json.loads((tmp_path / "killed" / "out" / "run_report.json").read_text())["slides"]["cmu"]
    assert report["chunks_skipped"] == done_before >= 3
    assert report["chunks_computed"] == report["chunks"] - done_before > 0

    reference = cli_run(whole)
    assert reference.wait(timeout=600) == 0, reference.communicate()[0][-2000:]
    resumed, uninterrupted = map_files(tmp_path / "killed" / "out"), map_files(tmp_path / "whole" / "out")
    assert resumed.keys() == uninterrupted.keys()
    different = [name for name in resumed if name.endswith("zarr.json") is False and resumed[name] != uninterrupted[name]]
    assert different == []


def test_bad_slide_is_reported_and_the_rest_finish(tmp_path, cmu_slide):
    truncated = tmp_path / "slides" / "truncated.svs"
    truncated.parent.mkdir()
    truncated.write_bytes(cmu_slide.read_bytes()[:200_000])
    cohort = write_cohort(
        tmp_path,
        [{"path": str(truncated)}, {"path": str(cmu_slide), "id": "good"}],
        processing={"chunk": 1008},
        cluster={"workers": 2, "dashboard_address": ":0"},
    )
    run = cli_run(cohort)
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 1, output
    # Reported once, as one line naming the slide; the traceback goes to the slide's log.
    mentions = [line for line in output.splitlines() if "truncated" in line]
    log = tmp_path / "out" / "logs" / "truncated.log"
    assert len(mentions) == 1 and mentions[0].startswith("FAILED truncated: ") and str(log) in mentions[0], output
    assert "Compute Failed" not in output and "Traceback" not in output
    assert "truncated.svs" in log.read_text() and "Traceback (most recent call last)" in log.read_text()
    assert not (tmp_path / "out" / "logs" / "good.log").exists()
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["status"] == "failed"
    assert report["slides"]["good"]["status"] == "done"
    bad = report["slides"]["truncated"]
    assert bad["status"] == "failed" and "truncated.svs" in bad["error"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path, cmu_slide):
    cohort = write_cohort(
        tmp_path, [{"path": str(cmu_slide), "id": "cmu"}],
        processing={"chunk": 432}, cluster={"workers": 1, "dashboard_address": ":0"},
    )
    first = cli_run(cohort)
    ledger = tmp_path / "out" / "ledger" / "cmu"
    deadline = time.time() + 240
    while not list(ledger.glob("chunk-*.done")):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, output[-2000:]
    assert "rerun the same command to resume" in output
    assert json.loads((tmp_path / "out" / "run_report.json").read_text())["status"] == "interrupted"
    second = cli_run(cohort)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output[-2000:]
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())["slides"]["cmu"]
    assert report["status"] == "done" and report["chunks_skipped"] >= 1
    # The rerun says what an earlier run had done: per slide, and in total.
    done, total = report["chunks_skipped"], report["chunks"]
    assert f"cmu: {done} of {total} chunks already done" in output
    assert f"Resumed: {done} of {total} chunks and 0 slides' tables were done by an earlier run" in output
    third = cli_run(cohort)  # everything done: the tables are not rewritten either
    output = third.communicate(timeout=600)[0]
    assert third.returncode == 0 and f"cmu: {total} of {total} chunks already done, tables already written" in output, output
    status = subprocess.run([sys.executable, "-m", "cerberus_batch.cli", "status", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert "done" in status.stdout and "nuclei" in status.stdout


def test_validate_prints_the_plan_and_names_unreadable_slides(tmp_path, cmu_slide):
    truncated = tmp_path / "slides" / "truncated.svs"
    truncated.parent.mkdir()
    truncated.write_bytes(cmu_slide.read_bytes()[:200_000])
    cohort = write_cohort(tmp_path, [{"path": str(cmu_slide), "id": "cmu"}, {"path": str(truncated)}], processing={"chunk": 1008})
    result = CliRunner().invoke(main, ["validate", str(cohort)], terminal_width=200)
    assert result.exit_code == 1, result.output
    row = next(line for line in result.output.splitlines() if "cmu" in line)
    view = open_slide(cmu_slide).at_mpp(0.5)
    plan = plan_chunks(view, tissue_mask(view, "auto"), chunk=1008)
    assert f"{len(plan.chunks)}" in row and f"{plan.tissue_mm2:.2f}" in row
    assert "truncated.svs" in result.output
    assert not (tmp_path / "out").exists()


def test_a_changed_mask_recomputes_the_slide_instead_of_mixing_plans(tmp_path, cluster, cmu_slide):
    """Ledger entries made under one tissue mask never count for another; a broken map group is rebuilt."""
    def column_mask(name: str, columns: slice) -> str:
        mask = np.zeros((297, 222), np.uint8)  # the slide (2220 x 2967 px) at 1/10 scale
        mask[60:200, columns] = 255
        Image.fromarray(mask).save(mask_file(tmp_path, name))
        return f"masks/{name}"

    def cohort(folder: str, mask: str):
        return load_cohort(write_cohort(tmp_path / folder, [{"path": str(cmu_slide), "id": "cmu", "mask": str(tmp_path / mask)}],
                                        output=str(tmp_path / folder / "out"), processing={"chunk": 432, "tissue_mask": "given"}))

    left, right = column_mask("left.png", slice(20, 110)), column_mask("right.png", slice(110, 200))
    assert run_cohort(cohort("rerun", left), show_progress=False, cluster=cluster).status == "ok"
    report = run_cohort(cohort("rerun", right), show_progress=False, cluster=cluster)
    assert report.status == "ok" and report.slides["cmu"].chunks_skipped == 0
    fresh = cohort("fresh", right)
    (fresh.output / "maps" / "cmu").mkdir(parents=True)  # a map group of ours that lost its arrays
    (fresh.output / "maps" / "cmu" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"software": "cerberus-batch 0.1.0"}}))
    assert run_cohort(fresh, show_progress=False, cluster=cluster).status == "ok"
    assert map_files(tmp_path / "rerun" / "out") == map_files(fresh.output)
