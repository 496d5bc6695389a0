"""The `cluster:` section: validation, the SLURM job script and Kubernetes manifests we would submit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cerberus_batch.cli import main
from cerberus_batch.cluster.gpu_pin import pinned_devices
from cerberus_batch.cluster.spec import ClusterSpec
from cerberus_batch.errors import ClusterError, CohortError
from cerberus_batch.pipeline.config import load_cohort
from helpers import small_cohort

GPU_KUBERNETES = {
    "kind": "kubernetes",
    "kubernetes": {
        "name": "colon",
        "image": "registry.example.org/cerberus-batch:0.1.0",
        "namespace": "histology",
        "workers": 3,
        "gpus_per_worker": 2,
        "cpu_workers": 2,
        "node_selector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
        "volumes": {
            "slides": {"claim": "slides-pvc", "mount": "/slides", "read_only": True},
            "results": {"host_path": "/mnt/results", "mount": "/results"},
        },
    },
}


@pytest.mark.parametrize(
    "cluster, expected",
    [
        ({"kind": "slurm"}, "kind 'slurm' needs a slurm: section"),
        ({"kind": "local", "slurm": {"cores": 2}}, "slurm section given but kind is 'local'"),
        ({"kind": "slurm", "slurm": {"cores": 2, "partition": "gpu"}}, "cluster.slurm.partition: unknown key"),
        ({"kind": "slurm", "workers": 3, "slurm": {}}, "workers is only for kind 'local'"),
        ({"kind": "slurm", "slurm": {"min_jobs": 5, "max_jobs": 2}}, "min_jobs (5) is more than max_jobs (2)"),
        ({"kind": "slurm", "slurm": {"gpus_per_job": 2, "processes": 3}}, "processes (3) must equal gpus_per_job (2)"),
        ({"kind": "slurm", "slurm": {"tls": False, "tls_directory": "/shared"}}, "tls_directory given but tls is false"),
        ({"kind": "slurm", "slurm": {"tls": "sometimes"}}, "cluster.slurm.tls: Input should be a valid boolean"),
        ({"kind": "kubernetes", "kubernetes": {"image": "x", "gpu": 1}}, "cluster.kubernetes.gpu: unknown key"),
        ({"kind": "kubernetes", "kubernetes": {}}, "cluster.kubernetes.image: Field required"),
        ({"kind": "kubernetes", "kubernetes": {"image": "x", "name": "Big_Name"}}, "cluster.kubernetes.name"),
        ({"kind": "kubernetes", "kubernetes": {"image": "x", "volumes": {"s": {"mount": "/s"}}}}, "exactly one of claim or host_path"),
        ({"kind": "address", "address": {"scheduler": "host:8786"}}, "cluster.address.scheduler: String should match"),
        ({"kind": "address", "address": {"scheduler": "tls://h:1", "ca_file": "ca.pem"}}, "TLS needs all three"),
        ({"kind": "address", "address": {"scheduler": "tcp://h:1", "ca_file": "a", "cert": "b", "key": "c"}}, "not tls://"),
        ({"kind": "dask-gateway"}, "cluster.kind: Input should be"),
    ],
)
def test_bad_cluster_section_is_one_line_naming_the_field(tmp_path, cluster, expected):
    path = small_cohort(tmp_path, cluster)
    with pytest.raises(CohortError) as caught:
        load_cohort(path)
    message = str(caught.value)
    # "file:line: cluster…", or "file: cluster…" where the field is missing from the file.
    assert "\n" not in message and re.match(rf"{re.escape(str(path))}(:\d+)?: cluster", message) and expected in message


def test_flat_local_keys_keep_working(tmp_path):
    cohort = load_cohort(small_cohort(tmp_path, {"workers": 2, "dashboard_address": ":0"}))
    assert cohort.cluster.kind == "local" and cohort.cluster.workers == 2 and cohort.cluster.dashboard_address == ":0"
    assert ClusterSpec().dashboard_address.startswith("127.0.0.1:")


def test_slurm_job_script_asks_for_what_the_cohort_says(tmp_path):
    slurm = {
        "queue": "gpu", "account": "lab42", "walltime": "02:30:00", "cores": 8, "memory": "32GB",
        "gpus_per_job": 2, "job_directives": ["--constraint=a100"], "local_directory": "/scratch",
        "log_directory": str(tmp_path / "logs"), "python": "/opt/env/bin/python", "interface": "lo",
    }
    path = small_cohort(tmp_path, {"kind": "slurm", "dashboard_address": "127.0.0.1:0", "slurm": slurm})
    result = CliRunner().invoke(main, ["cluster-spec", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    directives = {line.split(maxsplit=1)[1] for line in lines if line.startswith("#SBATCH")}
    assert {"-p gpu", "-A lab42", "-t 02:30:00", "--cpus-per-task=8", "--mem=30G", "--constraint=a100", "--gres=gpu:2"} <= directives
    assert any(d.startswith("-o ") and str(tmp_path / "logs") in d for d in directives)
    command = lines[-1].split()
    assert command[0] == "/opt/env/bin/python" and command[1:3] == ["-m", "distributed.cli.dask_worker"]
    # Two workers per job, one GPU each and 4 threads' worth of CPU slots; each pins its own GPU.
    assert command[command.index("--nworkers") + 1] == "2" and command[command.index("--nthreads") + 1] == "4"
    assert command[command.index("--resources") + 1] == "GPU=1,CPU=4"
    assert command[command.index("--preload") + 1] == "cerberus_batch.cluster.gpu_pin"
    assert command[command.index("--local-directory") + 1] == "/scratch"


def test_cpu_slurm_job_has_no_gpu_request(tmp_path):
    path = small_cohort(tmp_path, {"kind": "slurm", "dashboard_address": "127.0.0.1:0", "slurm": {"cores": 2, "interface": "lo"}})
    result = CliRunner().invoke(main, ["cluster-spec", str(path)])
    assert result.exit_code == 0, result.output
    assert "--gres" not in result.output and "--preload" not in result.output
    assert "--resources CPU=2" in result.output


def test_kubernetes_manifest_for_gpus(tmp_path):
    result = CliRunner().invoke(main, ["cluster-spec", str(small_cohort(tmp_path, GPU_KUBERNETES))])
    assert result.exit_code == 0, result.output
    policy, cluster, group = yaml.safe_load_all(result.output)
    # No TLS (the operator speaks plain tcp:// to the scheduler): ingress only from the cohort's own
    # pods (the scheduler, both worker groups), a run's pod, and the operator in any namespace.
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"] == {"name": "colon-dask", "namespace": "histology"}
    assert policy["spec"]["podSelector"] == {"matchLabels": {"dask.org/cluster-name": "colon"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [
        {"podSelector": {"matchLabels": {"dask.org/cluster-name": "colon"}}},
        {"podSelector": {"matchLabels": {"cerberus-batch/run": "colon"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "dask-kubernetes-operator"}}},
    ]}]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    assert cluster["metadata"] == {"name": "colon", "namespace": "histology"}
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] == 3
    pod = worker["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/cerberus-batch:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    args = container["args"]
    assert args[:2] == ["dask", "worker"] and args[args.index("--nworkers") + 1] == "2"
    # CPU workers exist, so GPU workers carry only the GPU and never take post-processing.
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"] == [
        {"name": "slides", "persistentVolumeClaim": {"claimName": "slides-pvc", "readOnly": True}},
        {"name": "results", "hostPath": {"path": "/mnt/results", "type": "Directory"}},
    ]
    assert container["volumeMounts"] == [
        {"name": "slides", "mountPath": "/slides", "readOnly": True},
        {"name": "results", "mountPath": "/results", "readOnly": False},
    ]
    scheduler = cluster["spec"]["scheduler"]
    assert scheduler["service"]["selector"] == {"dask.org/cluster-name": "colon", "dask.org/component": "scheduler"}
    assert "nvidia.com/gpu" not in str(scheduler) and "nodeSelector" not in scheduler["spec"]

    assert group["kind"] == "DaskWorkerGroup" and group["spec"]["cluster"] == "colon"
    cpu_pod = group["spec"]["worker"]["spec"]
    cpu_args = cpu_pod["containers"][0]["args"]
    assert group["spec"]["worker"]["replicas"] == 2 and cpu_args[cpu_args.index("--resources") + 1] == "CPU=1"
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"] and "nodeSelector" not in cpu_pod
    assert [v["name"] for v in cpu_pod["volumes"]] == ["slides", "results"]


def test_cpu_only_kubernetes_workers_take_every_task(tmp_path):
    k = {"kind": "kubernetes", "kubernetes": {"image": "img", "workers": 5, "threads_per_worker": 3}}
    result = CliRunner().invoke(main, ["cluster-spec", str(small_cohort(tmp_path, k))])
    policy, cluster = yaml.safe_load_all(result.output)
    assert policy["kind"] == "NetworkPolicy"
    container = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["args"][container["args"].index("--resources") + 1] == "CPU=3"


def test_cluster_spec_refuses_kinds_that_submit_nothing(tmp_path):
    result = CliRunner().invoke(main, ["cluster-spec", str(small_cohort(tmp_path, {"kind": "local"}))])
    assert result.exit_code == 1 and "submits nothing to review" in result.output


def test_kubernetes_network_policy_is_opt_out(tmp_path):
    k = {"kind": "kubernetes", "kubernetes": {"image": "img", "network_policy": False}}
    result = CliRunner().invoke(main, ["cluster-spec", str(small_cohort(tmp_path, k))])
    assert result.exit_code == 0, result.output
    assert [m["kind"] for m in yaml.safe_load_all(result.output)] == ["DaskCluster"]


def test_kubernetes_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    # A None entry makes the import fail, whether or not dask-kubernetes is installed here.
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    from cerberus_batch.cluster import start_cluster

    spec = load_cohort(small_cohort(tmp_path, GPU_KUBERNETES)).cluster
    with pytest.raises(ClusterError) as caught:
        with start_cluster(spec):
            pass
    assert str(caught.value) == "cluster kind 'kubernetes' needs dask-kubernetes: pip install cerberus-batch[kubernetes]"


@pytest.mark.parametrize(
    "visible, name, expected",
    [("0,1,2,3", "SLURMCluster-7-2", "2"), ("GPU-aa,GPU-bb", "colon-worker-x1-1", "GPU-bb"), ("3", "SLURMCluster-7", "3"), ("", "w", "")],
)
def test_each_worker_of_a_job_pins_one_gpu(visible, name, expected):
    assert pinned_devices(visible, name) == expected


@pytest.mark.parametrize("example, shows", [("cluster-slurm.yaml", "#SBATCH --gres=gpu:"), ("cluster-kubernetes.yaml", "kind: DaskCluster")])
def test_readme_examples_work_from_a_laptop(example, shows):
    """As the README shows them: the slides, the model folder and the network interface named there
    exist only on the cluster, and `cluster-spec` needs none of them."""
    root = Path(__file__).resolve().parents[1]
    command = f"cerberus-batch cluster-spec configs/{example}"
    assert command in (root / "README.md").read_text()
    config = yaml.safe_load((root / "configs" / example).read_text())
    assert not any(Path(p).exists() for p in re.findall(r"/[\w/.*-]+", yaml.safe_dump(config["slides"]))), "slides absent here"
    done = subprocess.run([sys.executable, "-m", "cerberus_batch.cli", *command.split()[1:]], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert shows in done.stdout
