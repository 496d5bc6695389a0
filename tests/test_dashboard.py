"""The dashboard as a person sees it: headless Chromium shows our tasks in the task stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from cerberus_batch.cluster import start_cluster
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from helpers import small_cohort

pytestmark = pytest.mark.e2e  # every test here runs a cohort

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Task names held by the rendered Bokeh documents' data sources (the task stream's key/name columns).
RENDERED_TASK_NAMES = """() => {
  const names = new Set();
  for (const doc of Bokeh.documents) for (const model of doc.all_models) {
    for (const column of Object.values(model.data || {})) {
      for (const value of Array.from(column || [])) if (typeof value === "string") names.add(value);
    }
  }
  return [...names];
}"""

PLOT_TITLES = "() => Bokeh.documents.flatMap(doc => [...doc.all_models]).filter(m => m.type === 'Title').map(m => m.text)"


@pytest.mark.timeout(300)  # a hung browser or job should fail this test, not stall the suite
def test_status_page_shows_our_tasks(tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not CHROMIUM.exists():  # a skip here, a failure under CI (tests/conftest.py)
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    cohort = load_cohort(small_cohort(tmp_path, {"workers": 2, "dashboard_address": "127.0.0.1:0"}))
    with start_cluster(cohort.cluster) as (cluster, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # Opened first: the task stream records tasks from the moment a page asks for it.
        page.goto(cluster.dashboard_link)
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        report = run_cohort(cohort, show_progress=False, cluster=cluster)
        assert report.status == "ok" and report.dashboard == cluster.dashboard_link
        # Task keys are "<name>-<run token>".
        expected = ["plan-synthetic-", *(f"infer-synthetic-{i}-" for i in range(report.slides["synthetic"].chunks))]
        # The browser gets the task stream over its websocket, a moment after the tasks finish.
        page.wait_for_function(
            f"keys => {{ const names = ({RENDERED_TASK_NAMES})(); return keys.every(k => names.some(n => n.startsWith(k))); }}",
            arg=expected, timeout=60_000,
        )
        names = set(page.evaluate(RENDERED_TASK_NAMES))
        titles = page.evaluate(PLOT_TITLES)
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        browser.close()
    assert "Task Stream" in titles
    assert all(any(name.startswith(prefix) for name in names) for prefix in expected)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
