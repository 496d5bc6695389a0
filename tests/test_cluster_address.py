"""`kind: address`: a run joins a scheduler and workers started outside it (plain TCP and TLS)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client
from distributed.security import Security

from cerberus_batch.cli import main
from helpers import small_cohort

pytestmark = pytest.mark.e2e  # each runs a cohort on a scheduler of its own


def self_signed(folder: Path) -> dict[str, str]:
    """A certificate that is its own CA: enough for scheduler, workers and client to trust each other."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return {"ca_file": str(cert), "cert": str(cert), "key": str(key)}


def dask_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(params=["tcp", "tls"])
def scheduler(request, tmp_path):
    """(address, TLS files or {}) of a scheduler on 127.0.0.1 with two single-thread workers."""
    tls = self_signed(tmp_path) if request.param == "tls" else {}
    tls_args = ["--tls-ca-file", tls["ca_file"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls else []
    info = tmp_path / "scheduler.json"
    processes = [dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0", "--protocol", request.param,
                          "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info), *tls_args)]
    try:
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        processes.append(dask_cli("worker", address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1", *tls_args))
        yield address, tls
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def test_run_joins_an_existing_scheduler(tmp_path, scheduler):
    address, tls = scheduler
    security = Security(tls_ca_file=tls["ca_file"], tls_client_cert=tls["cert"], tls_client_key=tls["key"]) if tls else None
    with Client(address, security=security, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
        cohort = small_cohort(tmp_path, {"kind": "address", "address": {"scheduler": address, **tls}})
        result = CliRunner().invoke(main, ["run", "--no-progress", str(cohort)])
        assert result.exit_code == 0, result.output
        assert "1/1 slides done" in result.output
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert {"plan-synthetic", "infer-synthetic"} <= set(prefixes)
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["status"] == "ok" and report["slides"]["synthetic"]["chunks_computed"] > 0


def test_tls_files_with_a_tcp_address_are_refused(tmp_path):
    cohort = small_cohort(tmp_path, {"kind": "address", "address": {"scheduler": "tcp://127.0.0.1:8786", **self_signed(tmp_path)}})
    result = CliRunner().invoke(main, ["run", str(cohort)])
    assert result.exit_code == 1 and "TLS files given but the scheduler address is not tls://" in result.output
