"""Cohorts larger than the cluster: slides enter the graph as others leave, and the report keeps up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from cerberus_batch.storage.layout import OutputLayout
from cerberus_batch.storage.ledger import TABLES_COMMITTED, Ledger
from cerberus_batch.storage.tables import read_table
from cerberus_batch.testing.slides import make_synthetic_slide
from helpers import write_cohort

pytestmark = pytest.mark.e2e  # every test here runs a cohort

UNFINISHED = {"waiting", "queued", "no-worker", "processing"}


def cohort_of(folder: Path, count: int) -> Path:
    """`count` copies of one small synthetic slide (800 x 640 px: one chunk each), ids s00, s01, ..."""
    slide = folder / "slides" / "s00.svs"
    make_synthetic_slide(slide, size=(800, 640), seed=2)
    for index in range(1, count):
        shutil.copyfile(slide, slide.with_name(f"s{index:02d}.svs"))
    return write_cohort(folder, {"glob": "slides/s*.svs"}, processing={"chunk": 432}, cluster={"workers": 1, "dashboard_address": ":0"})


class SlidesWithWork(SchedulerPlugin):
    """On the scheduler: after every transition, which slides have tasks still to run there, and
    how many tasks it holds."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.unfinished: dict[str, str] = {}  # key -> slide id
        self.most = self.most_tasks = 0
        self.slides: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        slide = str(key).split("-")[1]  # <what>-<slide>[-<chunk>]-<run token>; these ids hold no "-"
        if finish in UNFINISHED:
            self.unfinished[key] = slide
        else:
            self.unfinished.pop(key, None)
        self.slides.add(slide)
        self.most = max(self.most, len(set(self.unfinished.values())))
        self.most_tasks = max(self.most_tasks, len(self.scheduler.tasks))


def test_a_cohort_larger_than_the_bound_enters_the_graph_slide_by_slide(tmp_path):
    cohort = load_cohort(cohort_of(tmp_path, 6))
    # Its own cluster: the bound on slides in the graph is counted for one worker thread.
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        seen = SlidesWithWork(cluster.scheduler)
        cluster.scheduler.add_plugin(seen)
        report = run_cohort(cohort, show_progress=False, cluster=cluster)
        assert report.status == "ok", report.slides
    # One worker thread: 2 x 1 + 1 slides at a time, however many the cohort holds.
    assert seen.slides == {f"s{i:02d}" for i in range(6)}
    assert seen.most == 3
    # 7 tasks a one-chunk slide (plan, infer, instances, border, merge, overview, pyramid): those in
    # flight, and one that left whose release may reach the scheduler just after the next slide's plan.
    assert 3 * 2 <= seen.most_tasks <= (3 + 1) * 7
    summary = pd.read_parquet(OutputLayout(cohort.output).summaries[0])
    assert sorted(summary["slide_id"]) == sorted(seen.slides)


def test_a_killed_cohort_leaves_a_report_and_summary_of_the_slides_it_finished(tmp_path):
    cohort = cohort_of(tmp_path, 10)
    output = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "cerberus_batch.cli", "run", str(cohort), "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    layout = OutputLayout(output)
    deadline = time.time() + 240
    while True:
        assert run.poll() is None and time.time() < deadline, run.communicate()[0][-3000:]
        try:
            report = json.loads(layout.run_report.read_text())
        except FileNotFoundError:
            report = {"slides": {}}
        if sum(s["status"] == "done" for s in report["slides"].values()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # client, scheduler and workers, mid-cohort
    run.wait()

    report = json.loads(layout.run_report.read_text())  # as the killed run left it
    assert report["status"] == "running" and len(report["slides"]) == 10
    done = sorted(slide_id for slide_id, s in report["slides"].items() if s["status"] == "done")
    assert 2 <= len(done) < 10
    summary = pd.read_parquet(layout.summaries[0]).set_index("slide_id")
    assert set(done) <= set(summary.index)
    for slide_id in done:
        assert summary.loc[slide_id, "nuclei_count"] == Ledger(output).slide_stage(slide_id, TABLES_COMMITTED)["nuclei_count"]
        assert summary.loc[slide_id, "nuclei_count"] == len(read_table(output, "nuclei", [slide_id])) > 0
