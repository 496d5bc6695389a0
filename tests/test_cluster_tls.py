"""SLURM clusters talk TLS by default, with a certificate made per run (no SLURM needed here).

The worker command of the job script is run by hand, as a SLURM job would run it, so the TLS
wiring is checked on every machine; tests/test_cluster_slurm.py does it through real jobs.
"""

from __future__ import annotations

import shlex
import stat
import subprocess

import pytest
from click.testing import CliRunner
from distributed import Client
from distributed.security import Security
from distributed.comm import get_tcp_server_addresses

from cerberus_batch.cli import main
from cerberus_batch.cluster.slurm import new_slurm_cluster, run_security
from cerberus_batch.pipeline.config import load_cohort
from helpers import small_cohort


def slurm_cohort(folder, **slurm):
    return small_cohort(folder, {"kind": "slurm", "slurm": {"cores": 1, "memory": "1GB", "interface": "lo", **slurm}})


def test_preview_names_the_tls_files_but_shows_no_key(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    result = CliRunner().invoke(main, ["cluster-spec", str(slurm_cohort(tmp_path, tls_directory=str(tls)))])
    assert result.exit_code == 0, result.output
    command = result.output.splitlines()[-1].split()
    # What each run fills in at submission is marked, and said to be, a placeholder.
    assert command[3] == "tls://<scheduler-address>" and command[command.index("--protocol") + 1] == "tls://"
    assert command[command.index("--name") + 1] == "<worker-name>"
    assert command[command.index("--tls-key") + 1] == f"{tls}/.cerberus-batch-tls-<run>/key.pem"
    assert "127.0.0.1" not in result.output and "dummy-name" not in result.output
    note = [line.split(":")[0] for line in result.output.splitlines() if line.startswith("#   ")]
    assert note == ["#   <scheduler-address>", "#   <worker-name>", "#   .cerberus-batch-tls-<run>"]
    assert "# Preview: each run fills in these placeholders when it submits its jobs:" in result.output
    assert "PRIVATE KEY" not in result.output and "BEGIN" not in result.output
    assert list(tls.iterdir()) == []  # the preview's certificate is gone with it


def test_tls_false_is_plain_tcp(tmp_path):
    result = CliRunner().invoke(main, ["cluster-spec", str(slurm_cohort(tmp_path, tls=False))])
    assert result.exit_code == 0, result.output
    assert " tcp://<scheduler-address> " in result.output and "tls" not in result.output


def test_missing_tls_directory_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["cluster-spec", str(slurm_cohort(tmp_path, tls_directory=str(tmp_path / "nowhere")))])
    assert result.exit_code == 1
    assert result.output.strip().endswith(f"cluster: slurm.tls_directory {tmp_path / 'nowhere'} is not a folder (it must be one every node sees)")


@pytest.mark.timeout(180)
def test_job_script_worker_joins_over_tls_and_strangers_cannot(tmp_path):
    # The default dashboard_address (127.0.0.1:8787, or a free port if that one is busy).
    spec = load_cohort(slurm_cohort(tmp_path, tls_directory=str(tmp_path))).cluster
    with run_security(spec.slurm) as security, new_slurm_cluster(spec, security) as cluster:
        (folder,) = tmp_path.glob(".cerberus-batch-tls-*")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {"cert.pem": 0o600, "key.pem": 0o600}
        assert {host for host, _ in get_tcp_server_addresses(cluster.scheduler.http_server)} == {"127.0.0.1"}

        command = shlex.split(cluster.job_script().splitlines()[-1].replace("dummy-name", "by-hand"))
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=60)
                (address,) = client.scheduler_info()["workers"]
                assert address.startswith("tls://127.0.0.1:")
                assert client.submit(sum, [1, 2]).result(timeout=30) == 3
            # A TLS client whose certificate is not this run's is refused.
            with pytest.raises((OSError, TimeoutError)):
                Client(cluster.scheduler_address, security=Security.temporary(), timeout="3s")
        finally:
            worker.terminate()
            log = worker.communicate(timeout=30)[1]
    assert "Registered to:" in log and "tls://127.0.0.1:" in log
    assert not folder.exists()
