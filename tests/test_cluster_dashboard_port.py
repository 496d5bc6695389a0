"""A busy dashboard port is one line saying where the dashboard went, not distributed's UserWarning."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import pytest

from cerberus_batch.cluster import start_cluster
from cerberus_batch.pipeline.config import load_cohort
from helpers import small_cohort


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_local_cluster_says_which_port_it_used(tmp_path, busy_port, caplog):
    cohort = load_cohort(small_cohort(tmp_path, {"workers": 1, "dashboard_address": f"127.0.0.1:{busy_port}"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with start_cluster(cohort.cluster) as (cluster, _):
            port = cluster.scheduler.http_server.port
    assert port != busy_port
    assert [r.getMessage() for r in caplog.records if r.name == "cerberus_batch"] == [
        f"Dashboard port {busy_port} is busy; serving the dashboard on 127.0.0.1:{port}"
    ]
    assert [str(w.message) for w in caught if "already in use" in str(w.message)] == []


def test_slurm_preview_serves_no_dashboard_and_says_nothing_of_the_port(tmp_path, busy_port):
    """`cluster-spec` only fills in the job script: its scheduler serves no dashboard, so a busy port is no matter."""
    cohort = small_cohort(tmp_path, {"kind": "slurm", "dashboard_address": f"127.0.0.1:{busy_port}", "slurm": {"interface": "lo", "tls_directory": str(tmp_path)}})
    done = subprocess.run(
        [sys.executable, "-c", "from cerberus_batch.cli import main; main()", "cluster-spec", str(cohort)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "#SBATCH" in done.stdout
