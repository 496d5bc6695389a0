"""SLURM: a cohort runs on workers submitted as jobs to a real slurmctld (CI starts one: .ci/slurm-up).

Scheduler and workers talk TLS (the default), with this run's certificate.

Outside CI the test skips when SLURM is not running here; in CI (CI set) it fails instead, so a
missing SLURM can never turn CI silently green.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from distributed import Client, get_task_stream

from cerberus_batch.cluster import start_cluster
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.run import run_cohort
from helpers import output_files, small_cohort

pytestmark = pytest.mark.e2e  # every test here runs a cohort


def slurm_running() -> bool:
    if shutil.which("sbatch") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    if not slurm_running():
        if os.environ.get("CI"):
            pytest.fail("SLURM is not running (sbatch/sinfo): .ci/run must start it with .ci/slurm-up")
        pytest.skip("SLURM is not running on this machine (start it with .ci/slurm-up)")


def queued_job_ids() -> set[str]:
    listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True, timeout=20)
    return set(listed.stdout.split())


@pytest.mark.timeout(300)  # a hung browser or job should fail this test, not stall the suite
def test_cohort_on_two_slurm_jobs_matches_the_local_run(slurm, tmp_path):
    local = load_cohort(small_cohort(tmp_path, {"workers": 2, "dashboard_address": "127.0.0.1:0"}, output="local"))
    assert run_cohort(local, show_progress=False).status == "ok"

    slurm_options = {
        "cores": 1, "memory": "1GB", "min_jobs": 2, "max_jobs": 2, "walltime": "00:10:00",
        "interface": "lo", "log_directory": str(tmp_path / "logs"), "tls_directory": str(tmp_path),
    }
    cohort = load_cohort(small_cohort(tmp_path, {"kind": "slurm", "dashboard_address": "127.0.0.1:0", "slurm": slurm_options}, output="slurm"))
    with start_cluster(cohort.cluster) as (cluster, gpu), Client(cluster) as client:
        assert not gpu
        assert " tls://127.0.0.1:" in cluster.job_script()
        client.wait_for_workers(2, timeout=120)
        job_of_worker = client.run(lambda: os.environ["SLURM_JOB_ID"])
        jobs = set(job_of_worker.values())
        assert len(jobs) == 2 and jobs <= queued_job_ids()
        with get_task_stream(client) as stream:
            report = run_cohort(cohort, show_progress=False, cluster=cluster)
        assert report.status == "ok", report.slides
        ran_on = {task["key"]: task["worker"] for task in stream.data}
    # Task keys are "<name>-<run token>".
    assert {key.rsplit("-", 1)[0] for key in ran_on if key.startswith(("plan-", "infer-"))} == {
        "plan-synthetic", *(f"infer-synthetic-{i}" for i in range(report.slides["synthetic"].chunks))
    }
    assert {job_of_worker[worker] for worker in ran_on.values()} <= jobs
    # Each job's worker log (its stderr) shows it joined over TLS; the run's TLS files are gone.
    for job in jobs:
        log = (tmp_path / "logs" / f"dask-worker-{job}.err").read_text()
        assert re.search(r"Registered to:\s+tls://127\.0\.0\.1:", log), log
    assert not list(tmp_path.glob(".cerberus-batch-tls-*"))
    outputs = output_files(cohort.output)
    assert any(name.startswith("tables/nuclei") for name in outputs) and any(name.startswith("maps/") for name in outputs)
    assert outputs == output_files(local.output)
