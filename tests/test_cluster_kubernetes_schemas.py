"""The Kubernetes manifests `cluster-spec` shows, checked as the cluster would check them.

The `DaskCluster` and `DaskWorkerGroup` go against the dask-kubernetes operator's own CRD schemas;
the pod specs and the Service inside them, and every plain Kubernetes object (the NetworkPolicy),
against Kubernetes' schemas in strict mode.
"""

from __future__ import annotations

from functools import reduce
from importlib.metadata import PackageNotFoundError, distribution
from operator import getitem
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cerberus_batch.cluster.kubernetes import API_VERSION, cluster_manifest, manifests
from cerberus_batch.cluster.spec import ClusterSpec
from cerberus_batch.pipeline.config import load_cohort
from helpers import CONFIGS
from test_cluster_spec import GPU_KUBERNETES

KUBERNETES = "1.31"  # older than current releases, so the manifests also suit clusters not yet upgraded
CRDS = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds"

# Where each Dask resource holds plain Kubernetes objects: (path to it, the kind it is the spec of).
EMBEDDED = {
    "DaskCluster": [
        (("spec", "scheduler", "spec"), "Pod"), (("spec", "scheduler", "service"), "Service"), (("spec", "worker", "spec"), "Pod"),
    ],
    "DaskWorkerGroup": [(("spec", "worker", "spec"), "Pod")],
}

CLUSTERS: dict[str, Path | dict[str, Any]] = {
    "example": CONFIGS / "cluster-kubernetes.yaml",  # one GPU per worker and a CPU worker group, on claims
    "two-gpus-host-path": GPU_KUBERNETES,  # two GPUs (and processes) per worker, a CPU group, a hostPath volume
    "cpu-only": {"kind": "kubernetes", "kubernetes": {
        "image": "img", "workers": 3, "node_selector": {"pool": "cpu"},
        "tolerations": [{"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoExecute"}],
    }},
}


def operator_crds() -> Path:
    """The CRD folder of the installed dask-kubernetes operator: the version a run uses.

    Raises RuntimeError when dask-kubernetes (the `kubernetes` and `test` extras) is not installed.
    """
    try:
        folder = Path(distribution("dask-kubernetes").locate_file(CRDS))
    except PackageNotFoundError:
        raise RuntimeError("dask-kubernetes is not installed (pip install -e '.[test]')") from None
    if not folder.is_dir():
        raise RuntimeError(f"dask-kubernetes ships no CRDs at {folder}")
    return folder


def refuse_unknown_fields(schema: Any) -> Any:
    """The schema with every object closed to fields it does not name.

    The API server drops such fields from a custom resource (kr8s asks for no strict field
    validation, so only a warning would say so): the operator would never see them.
    """
    if isinstance(schema, list):
        return [refuse_unknown_fields(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: refuse_unknown_fields(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if schema.get("type") == "object" and not open_ended:
        closed["additionalProperties"] = False
    return closed


def crd_schema(folder: Path, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of `kind` at our API version, with the root fields the API server adds."""
    crd = yaml.safe_load((folder / f"{kind.lower()}.yaml").read_text())
    group, version = API_VERSION.split("/")
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    assert crd["spec"]["group"] == group and served, f"the operator's {kind} CRD serves no {API_VERSION}"
    schema = refuse_unknown_fields(served[0]["schema"]["openAPIV3Schema"])
    schema["properties"] |= {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": crd["spec"]["names"]["kind"]},
        "metadata": {"type": "object"},  # checked as an ObjectMeta with the pods below
    }
    schema["required"] = [*schema.get("required", []), "apiVersion", "kind", "metadata"]
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict[str, jsonschema.Draft4Validator]:
    # A skip fails under CI (tests/conftest.py), with this reason.
    try:
        folder = operator_crds()
    except RuntimeError as err:
        pytest.skip(f"the dask-kubernetes operator's CRDs: {err}")
    # OpenAPI v3 schemas, as CRDs hold them, are JSON Schema draft 4 with extensions.
    return {kind: jsonschema.Draft4Validator(crd_schema(folder, kind)) for kind in EMBEDDED}


@pytest.fixture(params=list(CLUSTERS))
def emitted(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    cluster = CLUSTERS[request.param]
    # The example names slides and a model on the cluster's volumes, not here.
    spec = load_cohort(cluster, inputs_here=False).cluster if isinstance(cluster, Path) else ClusterSpec.model_validate(cluster)
    return manifests(spec)


def crd_problems(validators: dict[str, jsonschema.Draft4Validator], manifest: dict[str, Any]) -> list[str]:
    errors = validators[manifest["kind"]].iter_errors(manifest)
    return [f"{manifest['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def kubernetes_objects(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The manifest, or for a Dask resource the pod specs and service in it, as whole objects."""
    if manifest["apiVersion"] != API_VERSION:
        yield manifest
        return
    for path, kind in EMBEDDED[manifest["kind"]]:
        # The resource's own metadata, so that it is checked as an ObjectMeta too.
        yield {"apiVersion": "v1", "kind": kind, "metadata": manifest["metadata"], "spec": reduce(getitem, path, manifest)}


def kubernetes_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    for item in kubernetes_objects(manifest):
        try:
            kubernetes_validate.validate(item, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{manifest['kind']} {item['kind']} {'.'.join(map(str, err.absolute_path))}: {err.message}")
    return problems


def test_dask_resources_fit_the_operator_crds(emitted, crd_validators):
    problems = [p for m in emitted if m["apiVersion"] == API_VERSION for p in crd_problems(crd_validators, m)]
    assert not problems, "\n".join(problems)


def test_pods_services_and_policies_are_valid_kubernetes(emitted):
    problems = [p for m in emitted for p in kubernetes_problems(m)]
    assert not problems, "\n".join(problems)


def test_a_misspelt_field_fails_both_checks(crd_validators):
    cluster = cluster_manifest(ClusterSpec.model_validate(GPU_KUBERNETES).kubernetes)
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    worker["volumeMount"] = worker.pop("volumeMounts")
    unexpected = "Additional properties are not allowed ('volumeMount' was unexpected)"
    assert crd_problems(crd_validators, cluster) == [f"DaskCluster spec.worker.spec.containers.0: {unexpected}"]
    assert kubernetes_problems(cluster) == [f"DaskCluster Pod spec.containers.0: {unexpected}"]


@pytest.mark.parametrize("name", ["1cohort", "a" * 54, "Cohort", "cohort-"])
def test_a_cluster_name_the_operator_cannot_use_is_refused(name):
    """The scheduler's Service is "<name>-scheduler", a DNS label: a letter first, at most 63 characters."""
    with pytest.raises(ValueError, match="name"):
        ClusterSpec.model_validate({"kind": "kubernetes", "kubernetes": {"name": name, "image": "img"}})
    ClusterSpec.model_validate({"kind": "kubernetes", "kubernetes": {"name": "a" * 53, "image": "img"}})
