"""Numbers that mean what they say and refusals that say why (issue 24, items 3-4): a kind the model did not
compute is null, never 0; a slide's time is that of the runs that computed it; a stale log goes once the
slide succeeds; a rerun with other settings names each one (old → new), refused before any cluster starts."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.errors import CohortError, RunMismatch
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.testing.slides import make_synthetic_slide
from helpers import write_cohort


def one_slide_cohort(folder: Path, slide: Path, **sections) -> Path:
    """The slide as `cmu`, in 1008 px chunks unless `processing` says otherwise."""
    return write_cohort(folder, [{"path": str(slide), "id": "cmu"}], **{"processing": {"chunk": 1008}, **sections})


def closed_port() -> int:
    """A local port nobody listens on: a cluster that tries it fails (slowly, after its connect timeout)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def stain_run(tmp_path_factory, cluster, cmu_slide):
    """The stain model (nuclei and tissue only) over CMU-1-Small-Region, then a rerun with nothing left to do."""
    folder = tmp_path_factory.mktemp("stain")
    slides = folder / "slides"
    slides.mkdir()
    slide = slides / "cmu.svs"
    slide.write_bytes(cmu_slide.read_bytes()[:4096])  # a truncated copy: the first run fails this slide
    cohort = load_cohort(one_slide_cohort(folder, slide))
    failed = run_cohort(cohort, show_progress=False, cluster=cluster)
    log_after_failure = (cohort.output / "logs" / "cmu.log").is_file()
    shutil.copyfile(cmu_slide, slide)
    first = run_cohort(cohort, show_progress=False, cluster=cluster)
    summary_first = pd.read_parquet(cohort.output / "summary.parquet")
    rerun = run_cohort(cohort, show_progress=False, cluster=cluster)
    return {"folder": folder, "cohort": cohort, "failed": failed, "log_after_failure": log_after_failure,
            "first": first, "summary_first": summary_first, "rerun": rerun}


@pytest.mark.e2e
def test_kinds_the_stain_model_does_not_compute_are_null_in_summary_status_and_report(stain_run):
    out = stain_run["cohort"].output
    assert stain_run["first"].status == "ok"
    summary = pq.read_table(out / "summary.parquet").to_pylist()[0]
    nuclei_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in OutputLayout(out).table_files("nuclei", "cmu"))
    assert summary["nuclei_count"] == nuclei_rows > 0
    for kind in ("glands", "lumens"):
        assert summary[f"{kind}_count"] is None and summary[f"{kind}_per_mm2"] is None
    csv = pd.read_csv(out / "summary.csv")
    assert csv["glands_count"].isna().all() and csv["nuclei_count"].notna().all()

    status = CliRunner().invoke(main, ["status", str(out)], env={"COLUMNS": "250"})
    assert status.exit_code == 0, status.output
    assert re.search(rf"\b{nuclei_rows} nuclei, – glands", status.output), status.output

    html = (out / "report.html").read_text()
    row = html[html.index("id='slide-cmu'"):]
    row = row[: row.index("</tr>")]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    glands, lumens = cells[6], cells[7]  # slide, status, reason, time, tissue, nuclei, glands, lumens
    assert "not computed" in glands and "not computed" in lumens and f"{nuclei_rows:,}" in cells[5]


@pytest.mark.e2e
def test_a_rerun_with_nothing_left_keeps_the_slides_computing_time(stain_run):
    out = stain_run["cohort"].output
    first, rerun = stain_run["first"].slides["cmu"], stain_run["rerun"].slides["cmu"]
    assert rerun.chunks_skipped == rerun.chunks and rerun.tables_skipped  # the rerun had nothing to do
    # The failed first run computed nothing (its plan failed), so the time is the run that computed the slide.
    assert first.seconds > 2.0
    assert rerun.seconds == first.seconds
    before = stain_run["summary_first"]["wall_seconds"].item()
    after = pd.read_parquet(out / "summary.parquet")["wall_seconds"].item()
    assert after == before == round(first.seconds, 3)
    report = json.loads((out / "run_report.json").read_text())
    assert report["slides"]["cmu"]["seconds"] == first.seconds
    assert f"{first.seconds:,.1f} s" in (out / "report.html").read_text()


@pytest.mark.e2e
def test_a_slides_old_log_goes_when_it_succeeds(stain_run):
    assert stain_run["failed"].slides["cmu"].status == "failed" and stain_run["log_after_failure"]
    assert stain_run["first"].slides["cmu"].status == "done"
    assert not (stain_run["cohort"].output / "logs" / "cmu.log").exists()


@pytest.mark.e2e
def test_a_rerun_with_other_settings_names_each_and_is_refused_before_any_cluster(stain_run, cmu_slide):
    folder = stain_run["folder"]
    unreachable = {"kind": "address", "address": {"scheduler": f"tcp://127.0.0.1:{closed_port()}"}}
    other = folder / "other"
    other.mkdir()
    path = one_slide_cohort(other, folder / "slides" / "cmu.svs", cluster=unreachable,
                            processing={"chunk": 2016, "dtype": "float16"}, output=str(stain_run["cohort"].output))
    cohort = load_cohort(path)
    began = time.monotonic()
    with pytest.raises(RunMismatch) as refused:
        run_cohort(cohort, show_progress=False)  # cluster=None: the cohort's own (unreachable) one would start
    said = str(refused.value)
    assert time.monotonic() - began < 5  # no connection was tried (a failed one takes its connect timeout)
    assert "\n" not in said
    assert "processing.chunk: 1008 → 2016" in said and 'processing.dtype: "uint8" → "float16"' in said
    assert "--fresh" in said and "cluster" not in said

    result = CliRunner().invoke(main, ["run", str(path), "--no-progress"])
    assert result.exit_code == 1 and "processing.chunk: 1008 → 2016" in result.output, result.output
    checked = CliRunner().invoke(main, ["validate", str(path)], env={"COLUMNS": "250"})
    assert checked.exit_code == 1
    assert re.search(r"PROBLEM output: .*processing\.chunk: 1008 → 2016; processing\.dtype", checked.output), checked.output


@pytest.mark.parametrize("heads,refused", [
    (["nuclei", "gland", "lumen", "tissue"], "gland, lumen"), (["nuclei"], "a subset"), (["tissue", "nuclei"], None),
])
def test_the_stain_model_refuses_heads_it_does_not_have(tmp_path, cmu_slide, heads, refused):
    path = one_slide_cohort(tmp_path, cmu_slide, model={"kind": "stain", "heads": heads})
    if refused is None:
        assert load_cohort(path).model.heads == heads
        return
    with pytest.raises(CohortError) as err:
        load_cohort(path)
    said = str(err.value)
    assert "\n" not in said and re.match(rf"{re.escape(str(path))}:\d+: model\.heads: the stain model always computes nuclei, tissue", said)
    assert said.endswith(f"for {refused}")


@pytest.mark.e2e
def test_a_heads_change_on_an_existing_output_is_refused(tmp_path, cluster, parity_model_dir):
    slide = make_synthetic_slide(tmp_path / "slides" / "small.svs", size=(1000, 800)).path
    model = {"kind": "cerberus", "weights": str(parity_model_dir), "heads": ["tissue"], "device": "cpu"}
    first = load_cohort(one_slide_cohort(tmp_path, slide, model=model))
    assert run_cohort(first, show_progress=False, cluster=cluster).status == "ok"
    changed = load_cohort(one_slide_cohort(tmp_path, slide, model={**model, "heads": ["nuclei", "tissue"]}))
    with pytest.raises(RunMismatch) as refused:
        run_cohort(changed, show_progress=False, cluster=cluster)
    said = str(refused.value)
    assert 'heads: ["Patch-Class"] → ["Nuclei-INST", "Nuclei-TYPE", "Patch-Class"]' in said
    assert "model_identity:" in said  # the identity covers the decoders that run
