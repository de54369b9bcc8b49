"""Pod tier: a real node (containerd + kubelet in the network namespace nimk8s), no operator.

The emulator image (a test double, not a model) comes from the local authenticated registry
through the pull secret; the Deployment becomes Ready; predictions go through the deployer's
port-forward; a wrong key is a RegistryAuthError naming the pull failure; stop leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.errors import RegistryAuthError
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.results import VQAResponse

from .conftest import Cluster, api_client, remove_crd
from .test_crd_tier import labelled

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(400)]

ENV_FILE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "env"


def registry_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                values[key] = value.strip("'\"")
    if "NIM_TEST_IMAGE_TAG" not in values:
        message = f"no local registry ({ENV_FILE} missing): run scripts/test-env.sh up"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulator_config(reg: dict[str, str], **overrides: Any) -> NIMConfig:
    values: dict[str, Any] = {
        "nvidia_api_key": reg["NIM_TEST_NGC_KEY"],
        "registry": reg["NIM_TEST_REGISTRY_PATH"],
        "image_name": reg["NIM_TEST_IMAGE_NAME"],
        "tag": reg["NIM_TEST_IMAGE_TAG"],
        "gpus": None,  # no GPU on this node
        "shm_size": "64MB",
        "startup_timeout": 240.0,
        "port": free_port(),
    }
    values.update(overrides)
    return NIMConfig(**values)


@pytest.fixture
async def api(pod_cluster: Cluster) -> AsyncIterator[Any]:
    async with api_client(pod_cluster.kubeconfig) as client:
        await remove_crd(client)  # no operator: the Deployment path
        yield client


async def test_emulator_deployment_ready_predicts_and_stop_leaves_nothing(
    pod_cluster: Cluster, api: Any, namespace: str, image_factory: Any
) -> None:
    reg = registry_env()
    config = emulator_config(reg)
    options = {"namespace": namespace, "kubeconfig": pod_cluster.kubeconfig}
    async with AsyncNIMDeployer(
        config, quiet=True, backend="kubernetes", port_forward=True, **options
    ) as deployer:
        result = await deployer.deploy()
        assert result.base_url == f"http://127.0.0.1:{config.port}"
        assert result.available_models  # /v1/models answered through the port-forward
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{result.base_url}/v1/health/ready")
        assert ready.status_code == 200
        image = image_factory(shapes=[("blue", (10, 10, 200, 200))])
        async with AsyncNIMPredictor(
            result.served_model_name, "vqa", base_url=result.base_url
        ) as predictor:
            answer = await predictor(image, "What color is the rectangle?")
        assert isinstance(answer, VQAResponse)
        assert answer.answer  # the emulator's reply came back through the endpoint
        rows = await AsyncNIMDeployer.list(backend="kubernetes", **options)
        assert [r.name for r in rows] == [result.container_name]
        assert rows[0].state == "ready"
    assert await AsyncNIMDeployer.stop(
        result.container_name, quiet=True, backend="kubernetes", **options
    )
    # kubectl get all,secrets -l ... : nothing left (pods and replica sets included)
    assert await labelled(api, namespace) == {}
    replica_sets = await k8s.AppsV1Api(api).list_namespaced_replica_set(namespace)
    assert replica_sets.items == []


async def test_wrong_registry_key_is_registry_auth_error(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    reg = registry_env()
    wrong = "nvapi-wrong-" + "9" * 50
    config = emulator_config(reg, nvidia_api_key=wrong, force_pull=True, startup_timeout=120.0)
    deployer = AsyncNIMDeployer(
        config,
        quiet=True,
        backend="kubernetes",
        namespace=namespace,
        kubeconfig=pod_cluster.kubeconfig,
    )
    with pytest.raises(RegistryAuthError) as info:
        await deployer.deploy()
    message = str(info.value)
    assert "cannot pull" in message
    assert config.image_ref in message
    assert "ngc-pull" in message  # names the pull secret it used
    assert wrong not in message
    with contextlib.suppress(Exception):
        await AsyncNIMDeployer.stop(
            config.container_name,
            quiet=True,
            backend="kubernetes",
            namespace=namespace,
            kubeconfig=pod_cluster.kubeconfig,
        )


async def test_no_gpu_on_the_node_is_gpu_runtime_error(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    from nim_async.errors import GPURuntimeError

    config = emulator_config(registry_env(), gpus=1, startup_timeout=120.0)
    backend_options = {"namespace": namespace, "kubeconfig": pod_cluster.kubeconfig}
    deployer = AsyncNIMDeployer(config, quiet=True, backend="kubernetes", **backend_options)
    with pytest.raises(GPURuntimeError) as info:
        await deployer.deploy()
    assert "nvidia.com/gpu" in str(info.value)
    for _ in range(300):  # a failed deploy removes what it made (the pod goes a moment later)
        if not await labelled(api, namespace):
            break
        await asyncio.sleep(0.1)
    assert await labelled(api, namespace) == {}


async def test_two_replicas_two_port_forwards_both_serve(
    pod_cluster: Cluster, api: Any, namespace: str, image_factory: Any
) -> None:
    reg = registry_env()
    from nim_async.deploy.ports import port_taken

    port = free_port()
    while port_taken("127.0.0.1", port + 1):  # two consecutive free local ports
        port = free_port()
    config = emulator_config(reg, replicas=2, port=port)
    options = {"namespace": namespace, "kubeconfig": pod_cluster.kubeconfig}
    async with AsyncNIMDeployer(
        config, quiet=True, backend="kubernetes", port_forward=True, **options
    ) as deployer:
        result = await deployer.deploy()
        assert result.endpoints == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        image = image_factory(shapes=[("blue", (10, 10, 200, 200))])
        async with httpx.AsyncClient() as http:
            for url in result.endpoints:
                assert (await http.get(f"{url}/v1/health/ready")).status_code == 200
        async with AsyncNIMPredictor(task_type="vqa", endpoints=result) as predictor:
            for _ in range(8):
                answer = await predictor(image, "What color is the rectangle?")
                assert isinstance(answer, VQAResponse)
        served = []
        async with httpx.AsyncClient() as http:
            for url in result.endpoints:  # each pod's own counters, through its own forward
                text = (await http.get(f"{url}/v1/metrics")).text
                served.append(
                    sum(
                        int(float(line.rsplit(" ", 1)[1]))
                        for line in text.splitlines()
                        if line.startswith("vllm:request_success_total")
                    )
                )
        assert sum(served) == 8
        assert min(served) >= 2  # the two pods both served
        rows = await AsyncNIMDeployer.list(backend="kubernetes", **options)
        assert "2/2 ready" in rows[0].status
    assert await AsyncNIMDeployer.stop(
        result.container_name, quiet=True, backend="kubernetes", **options
    )
    assert await labelled(api, namespace) == {}
