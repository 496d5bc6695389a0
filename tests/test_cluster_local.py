"""The local cluster: GPU workers take inference, CPU workers take the rest, results do not change.

This machine has no GPU, so `gpu_count` is told there are two: the local cluster then starts
the same worker processes it would on a 2-GPU machine (each with the GPU resource and its own
CUDA_VISIBLE_DEVICES); the stain model simply computes on the CPU inside them.
"""

from __future__ import annotations

import pytest
from distributed import Client
from distributed.comm import get_tcp_server_addresses

from cerberus_batch.cluster import start_cluster
from cerberus_batch.cluster.placement import CPU, GPU
from cerberus_batch.pipeline.config import load_cohort
from cerberus_batch.pipeline.progress import RunProgress
from cerberus_batch.pipeline.records import RunReport
from cerberus_batch.pipeline.run import CohortRun, run_cohort
from helpers import output_files, small_cohort

pytestmark = pytest.mark.e2e  # every test here runs a cohort


def executed_keys(dask_worker) -> list[str]:
    """Keys this worker ran, from its own state-machine log."""
    return sorted({entry[0] for entry in dask_worker.state.log if entry[2] == "executing" and isinstance(entry[0], str)})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("local-cluster")


@pytest.fixture(scope="module")
def cpu_outputs(folder):
    cohort = load_cohort(small_cohort(folder, {"workers": 2, "dashboard_address": "127.0.0.1:0"}, output="cpu"))
    assert run_cohort(cohort, show_progress=False).status == "ok"
    return output_files(cohort.output)


@pytest.mark.timeout(300)  # a hung browser or job should fail this test, not stall the suite
def test_gpu_workers_run_inference_and_cpu_workers_the_rest(folder, monkeypatch, cpu_outputs):
    monkeypatch.setattr("cerberus_batch.cluster.local.gpu_count", lambda: 2)
    cohort = load_cohort(small_cohort(folder, {"workers": 1, "dashboard_address": "127.0.0.1:0"}, output="gpu"))
    with start_cluster(cohort.cluster) as (cluster, gpu), Client(cluster) as client:
        assert gpu
        client.wait_for_workers(3, timeout=60)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        resources = {addr: w["resources"] for addr, w in workers.items()}
        devices = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        gpu_workers = {addr for addr, r in resources.items() if GPU in r}
        assert sorted(devices[a] for a in gpu_workers) == ["0", "1"]
        assert [r for r in resources.values() if GPU not in r] == [{CPU: 1}]

        report = RunReport(cohort=cohort.name, output=str(cohort.output))
        with RunProgress(len(cohort.slides), enabled=False) as progress:
            run = CohortRun(cohort, client, report, progress, gpu)
            run.start()
            run.loop()
        assert report.slides["synthetic"].status == "done", report.slides
        ran = client.run(executed_keys)

    infer = [key for addr in gpu_workers for key in ran[addr]]
    rest = [key for addr in set(ran) - gpu_workers for key in ran[addr]]
    assert len(infer) == report.slides["synthetic"].chunks and all(k.startswith("infer-") for k in infer)
    assert any(k.startswith("plan-synthetic-") for k in rest) and any(k.startswith("instances-") for k in rest)
    assert not [k for k in rest if k.startswith("infer-")]
    assert output_files(cohort.output) == cpu_outputs


def test_cpu_only_cluster_stays_on_this_machine_over_tls(tmp_path):
    # The default dashboard_address (127.0.0.1:8787, or a free port if that one is busy).
    cohort = load_cohort(small_cohort(tmp_path, {"workers": 1}))
    with start_cluster(cohort.cluster) as (cluster, gpu):
        assert not gpu
        assert {host for host, _ in get_tcp_server_addresses(cluster.scheduler.http_server)} == {"127.0.0.1"}
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")  # per-run credentials: other users here are refused
