"""Workers as pods of a dask-kubernetes operator `DaskCluster` that we describe ourselves.

The manifests are plain dicts, so `cerberus-batch cluster-spec` can show them without
dask-kubernetes installed; only creating the cluster imports it.

No TLS here: the operator (its scaling and idle checks) and its `KubeCluster`, through which the
run connects, reach the scheduler at a plain tcp:// address with no credentials. A NetworkPolicy
fences the pods instead: only the cohort's own pods, the operator and the run's pod get in.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from cerberus_batch.cluster.placement import resources_arg, worker_resources
from cerberus_batch.cluster.spec import ClusterSpec, KubernetesSpec
from cerberus_batch.errors import ClusterError

API_VERSION = "kubernetes.dask.org/v1"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
CLUSTER_LABEL = "dask.org/cluster-name"  # the operator puts it on the scheduler and every worker pod
RUN_LABEL = "cerberus-batch/run"
OPERATOR_LABELS = {"app.kubernetes.io/name": "dask-kubernetes-operator"}  # as its Helm chart labels it


def _volumes(k: KubernetesSpec) -> tuple[list[dict], list[dict]]:
    """(pod volumes, container volume mounts) for the slide and output volumes."""
    volumes, mounts = [], []
    for name, volume in k.volumes.items():
        if volume.claim is not None:
            source = {"persistentVolumeClaim": {"claimName": volume.claim, "readOnly": volume.read_only}}
        else:
            source = {"hostPath": {"path": volume.host_path, "type": "Directory"}}
        volumes.append({"name": name, **source})
        mounts.append({"name": name, "mountPath": str(volume.mount), "readOnly": volume.read_only})
    return volumes, mounts


def _pod(k: KubernetesSpec, container: dict[str, Any], *, worker: bool, placed: bool) -> dict[str, Any]:
    """A pod running `container`; workers mount the volumes, `placed` ones follow the node selector."""
    if not worker:
        return {"containers": [{**container, "image": k.image}]}
    volumes, mounts = _volumes(k)
    pod: dict[str, Any] = {"containers": [{**container, "image": k.image, "volumeMounts": mounts}], "volumes": volumes}
    if not placed:
        return pod
    if k.node_selector:
        pod["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in k.tolerations]
    return pod


def _worker(k: KubernetesSpec, replicas: int, gpus: int) -> dict[str, Any]:
    processes = max(1, gpus)  # one worker process per GPU in the pod
    resources = worker_resources(gpus, k.threads_per_worker, cpu_only_workers=bool(k.cpu_workers))
    args = [
        "dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nworkers", str(processes),
        "--nthreads", str(k.threads_per_worker), "--resources", resources_arg(resources),
        "--dashboard-address", "8788",
    ]
    if gpus > 1:
        args += ["--preload", "cerberus_batch.cluster.gpu_pin"]
    limits = {"cpu": k.cpu, "memory": k.memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": "worker",
        "args": args,
        "resources": {"requests": {"cpu": k.cpu, "memory": k.memory}, "limits": limits},
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    # Node selector and tolerations steer the main workers (e.g. onto GPU nodes), not the CPU group.
    placed = bool(gpus) or not k.cpu_workers
    return {"replicas": replicas, "spec": _pod(k, container, worker=True, placed=placed)}


def _scheduler(k: KubernetesSpec) -> dict[str, Any]:
    container = {
        "name": "scheduler",
        "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "periodSeconds": 5},
    }
    return {
        "spec": _pod(k, container, worker=False, placed=False),
        "service": {
            "type": "ClusterIP",
            "selector": {CLUSTER_LABEL: k.name, "dask.org/component": "scheduler"},
            "ports": [
                {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
                {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT, "targetPort": "http-dashboard"},
            ],
        },
    }


def cluster_manifest(k: KubernetesSpec) -> dict[str, Any]:
    """The `DaskCluster` resource: a scheduler and `workers` (GPU) workers."""
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": {"name": k.name, "namespace": k.namespace},
        "spec": {"worker": _worker(k, k.workers, k.gpus_per_worker), "scheduler": _scheduler(k)},
    }


def cpu_group_manifest(k: KubernetesSpec) -> dict[str, Any] | None:
    """The `DaskWorkerGroup` of GPU-less post-processing workers, when asked for."""
    if not k.cpu_workers:
        return None
    worker = _worker(k, k.cpu_workers, 0)
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskWorkerGroup",
        "metadata": {"name": f"{k.name}-cpu", "namespace": k.namespace},
        "spec": {"cluster": k.name, "worker": worker},
    }


def network_policy_manifest(k: KubernetesSpec) -> dict[str, Any] | None:
    """Ingress to the cohort's pods only from each other, the run's pod and the dask-kubernetes operator."""
    if not k.network_policy:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{k.name}-dask", "namespace": k.namespace},
        "spec": {
            "podSelector": {"matchLabels": {CLUSTER_LABEL: k.name}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {CLUSTER_LABEL: k.name}}},
                {"podSelector": {"matchLabels": {RUN_LABEL: k.name}}},  # a run started inside the cluster
                {"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_LABELS}},
            ]}],
        },
    }


def manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    """Everything that would be submitted, in order: the policy first, so no pod is ever unfenced."""
    k = spec.kubernetes
    return [m for m in (network_policy_manifest(k), cluster_manifest(k), cpu_group_manifest(k)) if m is not None]


@contextmanager
def kubernetes_cluster(spec: ClusterSpec) -> Iterator[Any]:
    """The DaskCluster (and CPU worker group) through the dask-kubernetes operator, inside its NetworkPolicy."""
    try:
        from dask_kubernetes.operator import KubeCluster
        from kr8s.objects import NetworkPolicy
    except ImportError:
        raise ClusterError("cluster kind 'kubernetes' needs dask-kubernetes: pip install cerberus-batch[kubernetes]") from None
    k = spec.kubernetes
    policy = network_policy_manifest(k)
    fence = NetworkPolicy(policy) if policy else None
    if fence is not None and not fence.exists():  # an interrupted run may have left it behind
        fence.create()
    try:
        with KubeCluster(custom_cluster_spec=cluster_manifest(k), namespace=k.namespace) as cluster:
            group = cpu_group_manifest(k)
            if group:
                cluster.add_worker_group("cpu", custom_spec=group["spec"]["worker"])
            yield cluster
    finally:
        if fence is not None:
            fence.delete()
