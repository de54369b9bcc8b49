"""Fixtures of the kubernetes-marked tests: a real API server (and, for the pod tier, a node).

``scripts/k8s-env.sh up`` writes ``$NIM_TEST_STATE/k8s/env`` (default under
/tmp/nim-async-test-env): the kubeconfig and the tier (``crd``: etcd + kube-apiserver; ``pod``:
also containerd, kubelet, scheduler and controller-manager in the network namespace nimk8s).
Without it the fixtures fail when ``$CI`` is set (CI must run this tier, never skip it) and skip
otherwise, naming the command. Every test gets a fresh namespace, deleted afterwards.

The NIMService CRD installed is NVIDIA's own (data/nvidia-nimservices-crd.yaml.gz: the NIM
Operator's config/crd/bases/apps.nvidia.com_nimservices.yaml, see data/NOTICE.md), so that the
API server prunes whatever its schema lacks and the tests see it; its ``x-kubernetes-validations``
and ``default: ""`` entries are stripped for 1.20. ``$NIM_K8S_NIMSERVICE_CRD`` names another file
(a newer operator's, or the trimmed data/nimservice-crd.yaml). A CRD from another source left by
an earlier run is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_asyncio = pytest.importorskip("kubernetes_asyncio")
from kubernetes_asyncio import client as k8s  # noqa: E402
from kubernetes_asyncio import config as k8s_config  # noqa: E402
from kubernetes_asyncio.client.exceptions import ApiException  # noqa: E402

STATE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "k8s"
DATA = Path(__file__).parent / "data"
CRD_NAME = "nimservices.apps.nvidia.com"
NVIDIA_CRD = DATA / "nvidia-nimservices-crd.yaml.gz"
SOURCE_ANNOTATION = "nim-async.test/crd-source"


@dataclass(frozen=True)
class Cluster:
    """The cluster the tests talk to."""

    kubeconfig: str
    tier: str
    netns: str


def _read_env() -> dict[str, str]:
    env_file = STATE / "env"
    values: dict[str, str] = {}
    if not env_file.is_file():
        return values
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            values[key] = value.strip("'\"")
    return values


def _absent(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " ($CI is set: this tier must run, not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The API server's facts (any tier), or fail under $CI / skip."""
    env = _read_env()
    if not env.get("NIM_K8S_KUBECONFIG"):
        _absent(
            f"no Kubernetes test cluster ({STATE / 'env'} missing): run scripts/k8s-env.sh up "
            "(after building once: scripts/k8s-env.sh build)"
        )
    return Cluster(
        env["NIM_K8S_KUBECONFIG"], env.get("NIM_K8S_TIER", "crd"), env.get("NIM_K8S_NETNS", "")
    )


@pytest.fixture(scope="session")
def pod_cluster(cluster: Cluster) -> Cluster:
    """The cluster when it has a node (pod tier), or fail under $CI / skip."""
    if cluster.tier != "pod":
        _absent(
            "the Kubernetes test cluster has no node (crd tier only): build kubelet & co. with "
            "scripts/k8s-env.sh build and run scripts/k8s-env.sh up as root"
        )
    return cluster


@contextlib.asynccontextmanager
async def api_client(kubeconfig: str) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient for the test's own checks."""
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api = k8s.ApiClient(configuration=configuration)
    try:
        yield api
    finally:
        await api.close()


def strip_for_120(node: Any) -> Any:
    """The operator's CRD without what Kubernetes 1.20 refuses."""
    if isinstance(node, dict):
        return {
            key: strip_for_120(value)
            for key, value in node.items()
            if key != "x-kubernetes-validations" and not (key == "default" and value == "")
        }
    if isinstance(node, list):
        return [strip_for_120(item) for item in node]
    return node


def crd_source() -> Path:
    """The file of the NIMService CRD the tests install (NVIDIA's unless overridden)."""
    source = os.environ.get("NIM_K8S_NIMSERVICE_CRD")
    return Path(source) if source else NVIDIA_CRD


def crd_body() -> dict[str, Any]:
    """The NIMService CRD the tests install, annotated with a digest of its source."""
    path = crd_source()
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
    docs = [d for d in yaml.safe_load_all(text) if d]
    body: dict[str, Any] = strip_for_120(docs[0])
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[SOURCE_ANNOTATION] = hashlib.sha256(raw).hexdigest()[:16]
    return body


async def install_crd(api: Any) -> None:
    """Install the NIMService CRD (idempotent) and wait until it is Established.

    A CRD of that name from another source (an earlier run with another file) is removed first.
    """
    ext = k8s.ApiextensionsV1Api(api)
    body = crd_body()
    wanted = body["metadata"]["annotations"][SOURCE_ANNOTATION]
    try:
        current = await ext.read_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise
    else:
        if (current.metadata.annotations or {}).get(SOURCE_ANNOTATION) != wanted:
            await remove_crd(api)
    try:
        await ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    for _ in range(300):
        crd = await ext.read_custom_resource_definition(CRD_NAME)
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        if conditions.get("Established") == "True":
            break
        await asyncio.sleep(0.1)
    # the API server serves the new resource a moment after Established
    custom = k8s.CustomObjectsApi(api)
    for _ in range(100):
        try:
            await custom.list_namespaced_custom_object(
                "apps.nvidia.com", "v1alpha1", "default", "nimservices"
            )
            return
        except ApiException:
            await asyncio.sleep(0.1)


async def remove_crd(api: Any) -> None:
    """Delete the NIMService CRD and wait until it is gone."""
    ext = k8s.ApiextensionsV1Api(api)
    try:
        await ext.delete_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise
    for _ in range(300):
        try:
            await ext.read_custom_resource_definition(CRD_NAME)
        except ApiException as exc:
            if exc.status == 404:
                return
        await asyncio.sleep(0.1)


@pytest.fixture
async def namespace(cluster: Cluster) -> AsyncIterator[str]:
    """A fresh namespace for one test (deleted afterwards)."""
    name = f"nimtest-{uuid.uuid4().hex[:8]}"
    async with api_client(cluster.kubeconfig) as api:
        core = k8s.CoreV1Api(api)
        await core.create_namespace({"metadata": {"name": name}})
        try:
            yield name
        finally:
            with contextlib.suppress(ApiException):
                await core.delete_namespace(name)
