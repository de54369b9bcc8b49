"""CRD tier: a real etcd + kube-apiserver; the test plays the NIM Operator by patching status.

With NVIDIA's NIMService CRD installed (see conftest), deploy creates the NIMService (and the two
secrets) with the expected spec, none of it pruned by the operator's schema; the deployer reports
ready / not ready / failed as the status says, with timeouts; a URL the user names is the
endpoint. Without the CRD it creates a Deployment + Service (no node here: it times out, as it
must; with a node and no GPU: GPURuntimeError).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from nim_async.config import NIMConfig
from nim_async.deploy.kubernetes import KubernetesBackend, KubeSettings, manifests
from nim_async.errors import GPURuntimeError, ServiceNotReadyError

from .conftest import Cluster, api_client, install_crd, remove_crd

pytestmark = pytest.mark.kubernetes

KEY = "nvapi-k8stest-" + "1" * 50
GROUP, VERSION, PLURAL = "apps.nvidia.com", "v1alpha1", "nimservices"
SELECTOR = "nim_async.managed=true,nim_async.instance=cosmos-reason1-7b"


def make_config(**overrides: Any) -> NIMConfig:
    values: dict[str, Any] = {
        "nvidia_api_key": KEY,
        "registry": "127.0.0.1:5599/nim/nvidia",
        "image_name": "cosmos-reason1-7b",
        "tag": "1.2.3",
        "shm_size": "2GB",
        "max_model_len": 4096,
        "gpus": 1,
        "startup_timeout": 30.0,
    }
    values.update(overrides)
    return NIMConfig(**values)


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[Any]:
    async with api_client(cluster.kubeconfig) as client:
        yield client


@pytest.fixture
async def with_crd(api: Any) -> None:
    await install_crd(api)


@pytest.fixture
async def without_crd(api: Any) -> None:
    await remove_crd(api)


async def wait_for_nimservice(api: Any, namespace: str, name: str) -> dict[str, Any]:
    custom = k8s.CustomObjectsApi(api)
    for _ in range(300):
        with contextlib.suppress(ApiException):
            return dict(
                await custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
        await asyncio.sleep(0.05)
    raise AssertionError(f"no NIMService {namespace}/{name} appeared")


def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T00:00:00Z",
    }


async def set_status(api: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    await k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


def not_stored(written: Any, stored: Any, path: str = "spec") -> list[str]:
    """The paths of ``written`` that ``stored`` lacks or holds differently (pruned / changed)."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return [path]
        return [
            miss
            for key, value in written.items()
            for miss in (
                not_stored(value, stored[key], f"{path}.{key}")
                if key in stored
                else [f"{path}.{key}"]
            )
        ]
    if isinstance(written, list):
        if not isinstance(stored, list) or len(written) != len(stored):
            return [path]
        return [
            m
            for i, (w, s) in enumerate(zip(written, stored, strict=True))
            for m in not_stored(w, s, f"{path}[{i}]")
        ]
    return [] if written == stored else [path]


async def labelled(api: Any, namespace: str) -> dict[str, list[str]]:
    """``kubectl get all,secrets -l <the deployment's labels>``: what is left, by kind."""
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    found = {
        "secrets": [
            s.metadata.name
            for s in (await core.list_namespaced_secret(namespace, label_selector=SELECTOR)).items
        ],
        "services": [
            s.metadata.name
            for s in (await core.list_namespaced_service(namespace, label_selector=SELECTOR)).items
        ],
        "deployments": [
            d.metadata.name
            for d in (
                await apps.list_namespaced_deployment(namespace, label_selector=SELECTOR)
            ).items
        ],
        "replicasets": [
            r.metadata.name
            for r in (
                await apps.list_namespaced_replica_set(namespace, label_selector=SELECTOR)
            ).items
        ],
        "pods": [
            p.metadata.name
            for p in (await core.list_namespaced_pod(namespace, label_selector=SELECTOR)).items
        ],
    }
    with contextlib.suppress(ApiException):
        items = await k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=SELECTOR
        )
        found["nimservices"] = [i["metadata"]["name"] for i in items["items"]]
    return {k: v for k, v in found.items() if v}


async def test_nimservice_spec_secrets_ready_and_stop(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    config = make_config()
    backend = KubernetesBackend(config, namespace=namespace, kubeconfig=cluster.kubeconfig)
    task = asyncio.create_task(backend.deploy())
    obj = await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    spec = obj["spec"]
    # everything written survived the operator's schema (a field it lacks would be pruned)
    written = manifests.nim_service(config, KubeSettings(namespace=namespace))["spec"]
    assert not_stored(written, spec) == []
    assert spec["image"] == {
        "repository": "127.0.0.1:5599/nim/nvidia/cosmos-reason1-7b",
        "tag": "1.2.3",
        "pullPolicy": "IfNotPresent",
        "pullSecrets": ["cosmos-reason1-7b-ngc-pull"],
    }
    assert spec["authSecret"] == "cosmos-reason1-7b-ngc-api"
    assert spec["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert spec["replicas"] == 1
    assert spec["storage"]["sharedMemorySizeLimit"] == str(2 * 1024**3)
    assert spec["expose"]["service"]["port"] == 8000
    assert {"name": "NIM_MAX_MODEL_LEN", "value": "4096"} in spec["env"]
    assert spec["storage"]["emptyDir"] == {}
    assert (spec["userID"], spec["groupID"]) == (1000, 2000)
    assert spec["readinessProbe"]["probe"]["httpGet"] == {"path": "/v1/health/ready", "port": 8000}
    assert obj["metadata"]["labels"]["nim_async.managed"] == "true"
    assert not task.done()  # no status yet: still waiting

    core = k8s.CoreV1Api(api)
    pull = await core.read_namespaced_secret("cosmos-reason1-7b-ngc-pull", namespace)
    assert pull.type == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(pull.data[".dockerconfigjson"]))["auths"]
    entry = auths["127.0.0.1:5599"]
    assert (entry["username"], entry["password"]) == ("$oauthtoken", KEY)
    assert base64.b64decode(entry["auth"]).decode() == f"$oauthtoken:{KEY}"
    api_key = await core.read_namespaced_secret("cosmos-reason1-7b-ngc-api", namespace)
    assert base64.b64decode(api_key.data["NGC_API_KEY"]).decode() == KEY

    await set_status(api, namespace, "cosmos-reason1-7b", {"state": "NotReady"})
    await asyncio.sleep(0.3)
    assert not task.done()  # NotReady is not ready
    await set_status(
        api,
        namespace,
        "cosmos-reason1-7b",
        {
            "state": "Ready",
            "availableReplicas": 1,
            "conditions": [condition("NIM_SERVICE_READY", "True", "Ready", "deployment is ready")],
        },
    )
    result = await asyncio.wait_for(task, 10)
    assert result.container_name == "cosmos-reason1-7b"
    assert result.container_id == obj["metadata"]["uid"]
    assert result.base_url == f"http://cosmos-reason1-7b.{namespace}.svc.cluster.local:8000"
    assert KEY not in repr(result)
    assert KEY not in repr(backend)

    rows = await KubernetesBackend.list(namespace=namespace, kubeconfig=cluster.kubeconfig)
    assert [(r.name, r.state) for r in rows] == [("cosmos-reason1-7b", "ready")]

    assert await backend.stop() is True
    assert await labelled(api, namespace) == {}
    assert await backend.stop() is False


async def test_not_ready_times_out_and_cleans_up(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    backend = KubernetesBackend(
        make_config(startup_timeout=3.0), namespace=namespace, kubeconfig=cluster.kubeconfig
    )
    task = asyncio.create_task(backend.deploy())
    await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    await set_status(
        api,
        namespace,
        "cosmos-reason1-7b",
        {
            "state": "NotReady",
            "conditions": [condition("NIM_SERVICE_READY", "False", "NotReady", "0/1 ready")],
        },
    )
    with pytest.raises(ServiceNotReadyError) as info:
        await asyncio.wait_for(task, 20)
    message = str(info.value)
    assert "not ready after 3 seconds" in message
    assert "NotReady" in message
    assert KEY not in message
    for _ in range(100):
        if not await labelled(api, namespace):
            break
        await asyncio.sleep(0.1)
    assert await labelled(api, namespace) == {}


async def test_failed_status_fails_at_once(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    backend = KubernetesBackend(
        make_config(startup_timeout=60.0), namespace=namespace, kubeconfig=cluster.kubeconfig
    )
    task = asyncio.create_task(backend.deploy())
    await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    await set_status(
        api,
        namespace,
        "cosmos-reason1-7b",
        {
            "state": "Failed",
            "conditions": [
                condition("NIM_SERVICE_FAILED", "True", "Failed", "model profile not found")
            ],
        },
    )
    with pytest.raises(ServiceNotReadyError) as info:
        await asyncio.wait_for(task, 10)  # well before the 60 s timeout
    assert "failed" in str(info.value)
    assert "model profile not found" in str(info.value)


async def version(list_func: Any, namespace: str) -> str:
    """The resourceVersion of a list now (a watch from it misses nothing made after)."""
    return str((await list_func(namespace)).metadata.resource_version)


async def first_added(list_func: Any, namespace: str, name: str, since: str) -> Any:
    """The object ``name`` as first created after ``since`` (even if deleted again since)."""
    watcher = k8s_watch.Watch()
    try:
        async with watcher.stream(
            list_func,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=since,
            timeout_seconds=30,
        ) as stream:
            async for event in stream:
                if event["type"] == "ADDED":
                    return event["object"]
    finally:
        await watcher.close()
    raise AssertionError(f"{name} was not created in {namespace}")


async def test_without_crd_a_deployment_and_service(
    cluster: Cluster, api: Any, without_crd: None, namespace: str
) -> None:
    config = make_config(startup_timeout=4.0, served_model_name="my-nim")
    backend = KubernetesBackend(config, namespace=namespace, kubeconfig=cluster.kubeconfig)
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    # watched from before the deploy: with a node, the failed deploy may remove them at once
    created = [
        asyncio.create_task(first_added(func, namespace, "my-nim", await version(func, namespace)))
        for func in (apps.list_namespaced_deployment, core.list_namespaced_service)
    ]
    task = asyncio.create_task(backend.deploy())
    deployment, service = await asyncio.wait_for(asyncio.gather(*created), 30)
    pod = deployment.spec.template.spec
    container = pod.containers[0]
    assert container.image == "127.0.0.1:5599/nim/nvidia/cosmos-reason1-7b:1.2.3"
    assert container.readiness_probe.http_get.path == "/v1/health/ready"
    assert container.readiness_probe.http_get.port == 8000
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    env = {e.name: e for e in container.env}
    assert env["NGC_API_KEY"].value_from.secret_key_ref.name == "my-nim-ngc-api"
    assert env["NIM_SERVED_MODEL_NAME"].value == "my-nim"
    assert [s.name for s in pod.image_pull_secrets] == ["my-nim-ngc-pull"]
    assert pod.security_context.run_as_user == 1000
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["dshm"].empty_dir.medium == "Memory"
    assert volumes["dshm"].empty_dir.size_limit == str(2 * 1024**3)
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {"dshm": "/dev/shm", "nim-cache": "/opt/nim/.cache"}
    assert service.spec.ports[0].port == 8000
    if cluster.tier == "pod":  # a node without GPUs: the pod is unschedulable
        with pytest.raises(GPURuntimeError) as info:
            await asyncio.wait_for(task, 20)
    else:  # no node: nothing ever runs
        with pytest.raises(ServiceNotReadyError) as info:
            await asyncio.wait_for(task, 20)
        assert "Deployment" in str(info.value)
    assert KEY not in str(info.value)


async def test_cli_deploy_ps_stop_kubernetes(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    import sys

    common = ["--kubernetes", "--namespace", namespace, "--kubeconfig", cluster.kubeconfig]
    env = {**os.environ, "NGC_API_KEY": KEY}
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nim_async.cli", "deploy", "--json", "--quiet",
        "--registry", "127.0.0.1:5599/nim/nvidia", "--gpus", "none", "--startup-timeout", "30",
        *common,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    await set_status(api, namespace, "cosmos-reason1-7b", {"state": "Ready"})
    out, err = await asyncio.wait_for(deploy.communicate(), 60)
    assert deploy.returncode == 0, err.decode()
    payload = json.loads(out)
    assert payload["base_url"] == f"http://cosmos-reason1-7b.{namespace}.svc.cluster.local:8000"
    assert KEY not in out.decode() + err.decode()

    async def cli(*argv: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nim_async.cli", *argv, *common,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        text, _ = await asyncio.wait_for(proc.communicate(), 60)
        return int(proc.returncode or 0), text.decode()

    code, text = await cli("ps", "--json")
    assert code == 0, text
    assert [row["name"] for row in json.loads(text)] == ["cosmos-reason1-7b"]
    code, text = await cli("stop", "cosmos-reason1-7b")
    assert code == 0, text
    assert await labelled(api, namespace) == {}


async def test_blocking_nimdeployer_passes_the_kubernetes_keywords(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    from nim_async.sync.deployer import NIMDeployer

    options = {"backend": "kubernetes", "namespace": namespace, "kubeconfig": cluster.kubeconfig}
    deployer = NIMDeployer(make_config(), quiet=True, **options)
    task = asyncio.create_task(asyncio.to_thread(deployer.deploy))
    await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    await set_status(api, namespace, "cosmos-reason1-7b", {"state": "Ready"})
    result = await asyncio.wait_for(task, 30)
    assert result.base_url.endswith(f".{namespace}.svc.cluster.local:8000")
    rows = await asyncio.to_thread(NIMDeployer.list, **options)
    assert [r.name for r in rows] == ["cosmos-reason1-7b"]
    assert await asyncio.to_thread(NIMDeployer.stop, "cosmos-reason1-7b", True, **options)
    assert await labelled(api, namespace) == {}


async def test_replicas_are_the_nimservices_and_the_service_is_the_one_endpoint(
    cluster: Cluster, api: Any, with_crd: None, namespace: str
) -> None:
    config = make_config(replicas=2, gpus="all", served_model_name="twin")
    backend = KubernetesBackend(config, namespace=namespace, kubeconfig=cluster.kubeconfig)
    task = asyncio.create_task(backend.deploy())
    obj = await wait_for_nimservice(api, namespace, "twin")
    assert obj["spec"]["replicas"] == 2
    assert obj["spec"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}  # one per pod
    await set_status(
        api,
        namespace,
        "twin",
        {
            "state": "Ready",
            "availableReplicas": 2,
            "conditions": [condition("NIM_SERVICE_READY", "True", "Ready", "deployment is ready")],
        },
    )
    result = await asyncio.wait_for(task, 10)
    # in-cluster, the Service balances over the pods: one address
    assert result.endpoints == [f"http://twin.{namespace}.svc.cluster.local:8000"]
    assert await backend.stop() is True


async def test_a_url_the_user_names_is_the_endpoint(
    cluster: Cluster, api: Any, with_crd: None, namespace: str, emulator: Any, image_factory: Any
) -> None:
    # the emulator (a test double) stands in for what a NodePort / ingress would reach
    from nim_async.predict.predictor import AsyncNIMPredictor
    from nim_async.results import VQAResponse

    url = emulator.url + "/"
    backend = KubernetesBackend(
        make_config(), namespace=namespace, kubeconfig=cluster.kubeconfig, url=url
    )
    task = asyncio.create_task(backend.deploy())
    await wait_for_nimservice(api, namespace, "cosmos-reason1-7b")
    await set_status(api, namespace, "cosmos-reason1-7b", {"state": "Ready"})
    result = await asyncio.wait_for(task, 10)
    assert result.endpoints == [emulator.url]
    assert result.base_url == emulator.url
    assert result.available_models == ["cosmos-reason1-7b"]  # /v1/models read through the URL
    async with AsyncNIMPredictor(task_type="vqa", endpoints=result) as predictor:
        answer = await predictor(image_factory(shapes=[("red", (5, 5, 60, 60))]), "What color?")
    assert isinstance(answer, VQAResponse)
    assert await backend.stop() is True
    assert await labelled(api, namespace) == {}
