"""Pod tier: a real node (containerd + kubelet in the network namespace nimk8s), no operator.

The emulator image (a test double, not a model) comes from the local authenticated registry
through the pull secret; the Deployment becomes Ready; predictions (and ``bench``) go through the
deployer's port-forwards; a wrong key is a RegistryAuthError naming the pull failure, a missing
tag an ImagePullError, a container that dies a ContainerExitedError with its log tail; stop (and
a failed deploy) leaves nothing (``kubectl get all,secrets`` of the namespace: only what
Kubernetes itself made).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.errors import ContainerExitedError, ImagePullError, RegistryAuthError
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


async def everything(api: Any, namespace: str) -> dict[str, list[str]]:
    """``kubectl get all,secrets`` of the namespace, labels or not, less Kubernetes' own objects.

    What the namespace holds whoever made it (pods, replica sets, deployments, services,
    secrets; no daemon sets, stateful sets or jobs are ever made); the service account's token
    secret, which Kubernetes makes in every namespace, is left out.
    """
    core, apps, batch = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.BatchV1Api(api)
    found = {
        "pods": (await core.list_namespaced_pod(namespace)).items,
        "replicasets": (await apps.list_namespaced_replica_set(namespace)).items,
        "deployments": (await apps.list_namespaced_deployment(namespace)).items,
        "statefulsets": (await apps.list_namespaced_stateful_set(namespace)).items,
        "daemonsets": (await apps.list_namespaced_daemon_set(namespace)).items,
        "jobs": (await batch.list_namespaced_job(namespace)).items,
        "services": (await core.list_namespaced_service(namespace)).items,
        "secrets": [
            s
            for s in (await core.list_namespaced_secret(namespace)).items
            if s.type != "kubernetes.io/service-account-token"
        ],
    }
    return {kind: [i.metadata.name for i in items] for kind, items in found.items() if items}


async def eventually_empty(api: Any, namespace: str, seconds: float = 30.0) -> None:
    """Wait until :func:`everything` is empty (the garbage collector removes pods a moment
    after their replica set), then assert it."""
    for _ in range(int(seconds * 10)):
        if not await everything(api, namespace):
            break
        await asyncio.sleep(0.1)
    assert await everything(api, namespace) == {}


async def crash_image(reg: dict[str, str]) -> str:
    """The emulator image with ``--exit-after 0.5`` pushed to the local registry; its tag.

    Built on the local dockerd (a CMD-only layer over the emulator image) and pushed with the
    registry key, so the node pulls it through the pull secret like the emulator image.
    """
    from pydantic import SecretStr

    from nim_async.deploy.docker import DockerClient
    from nim_async.deploy.docker.registry import RegistryAuth
    from nim_async.devtools.emulator_image import build_emulator_variant

    args = ("--startup-seconds", "60", "--exit-after", "0.5")
    tag = (
        "k8s-crash-"
        + hashlib.sha256(" ".join((reg["NIM_TEST_IMAGE_TAG"], *args)).encode()).hexdigest()[:10]
    )
    ref = f"{reg['NIM_TEST_REGISTRY_PATH']}/{reg['NIM_TEST_IMAGE_NAME']}:{tag}"
    auth = RegistryAuth(reg["NIM_TEST_REGISTRY"], "$oauthtoken", SecretStr(reg["NIM_TEST_NGC_KEY"]))
    async with DockerClient(secrets=(reg["NIM_TEST_NGC_KEY"],)) as docker:
        if not await docker.image_exists(reg["NIM_TEST_IMAGE"]):
            async for _ in docker.pull(reg["NIM_TEST_IMAGE"], auth):
                pass
        await build_emulator_variant(docker, reg["NIM_TEST_IMAGE"], ref, args)
        try:
            await docker.push(ref, auth)
        finally:
            with contextlib.suppress(Exception):
                await docker.remove_image(ref)  # the registry keeps it; the engine need not
    return tag


def kube_deployer(config: NIMConfig, cluster: Cluster, namespace: str) -> AsyncNIMDeployer:
    """A quiet deployer of ``config`` into ``namespace`` of the test cluster."""
    return AsyncNIMDeployer(
        config, quiet=True, backend="kubernetes", namespace=namespace, kubeconfig=cluster.kubeconfig
    )


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
        made = await everything(api, namespace)
        assert sorted(made) == ["deployments", "pods", "replicasets", "secrets", "services"]
        assert sorted(made["secrets"]) == [
            f"{result.container_name}-ngc-api",
            f"{result.container_name}-ngc-pull",
        ]
    assert await AsyncNIMDeployer.stop(
        result.container_name, quiet=True, backend="kubernetes", **options
    )
    # kubectl get all,secrets -l ... : nothing left, labelled or not (stop waited for the pods)
    assert await labelled(api, namespace) == {}
    assert await everything(api, namespace) == {}


async def test_wrong_registry_key_is_registry_auth_error(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    reg = registry_env()
    wrong = "nvapi-wrong-" + "9" * 50
    config = emulator_config(reg, nvidia_api_key=wrong, force_pull=True, startup_timeout=120.0)
    deployer = kube_deployer(config, pod_cluster, namespace)
    with pytest.raises(RegistryAuthError) as info:
        await deployer.deploy()
    message = str(info.value)
    assert "cannot pull" in message
    assert config.image_ref in message
    assert "ngc-pull" in message  # names the pull secret it used
    assert "401" in message or "nauthorized" in message  # the registry's own word
    assert wrong not in message
    assert wrong not in repr(info.value)
    await eventually_empty(api, namespace)  # the failed deploy removed what it made


async def test_missing_tag_is_image_pull_error_not_auth(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    config = emulator_config(registry_env(), tag="no-such-tag-k8s", startup_timeout=120.0)
    deployer = kube_deployer(config, pod_cluster, namespace)
    with pytest.raises(ImagePullError) as info:
        await deployer.deploy()
    assert not isinstance(info.value, RegistryAuthError)
    assert "no-such-tag-k8s" in str(info.value)
    assert config.nvidia_api_key.get_secret_value() not in str(info.value)
    await eventually_empty(api, namespace)


async def test_container_that_dies_is_container_exited_error_with_its_log_tail(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    reg = registry_env()
    config = emulator_config(reg, tag=await crash_image(reg), startup_timeout=120.0)
    deployer = kube_deployer(config, pod_cluster, namespace)
    with pytest.raises(ContainerExitedError) as info:
        await deployer.deploy()
    assert info.value.exit_code == 1  # the emulator's --exit-after status
    assert not info.value.oom_killed
    assert "exit-after" in info.value.logs or "exit_after" in info.value.logs
    assert "Last log lines" in str(info.value)
    assert reg["NIM_TEST_NGC_KEY"] not in str(info.value) + info.value.logs
    await eventually_empty(api, namespace)


async def test_no_gpu_on_the_node_is_gpu_runtime_error(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    from nim_async.errors import GPURuntimeError

    config = emulator_config(registry_env(), gpus=1, startup_timeout=120.0)
    with pytest.raises(GPURuntimeError) as info:
        await kube_deployer(config, pod_cluster, namespace).deploy()
    assert "nvidia.com/gpu" in str(info.value)
    await eventually_empty(api, namespace)  # a failed deploy removes what it made


async def bench(urls: list[str], tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    """``nim-async bench --url ... --concurrency 2 --num-requests 8``: status, report, the point."""
    import argparse

    import orjson

    from nim_async.bench import cli as bench_cli
    from nim_async.bench.report import format_table

    lines: list[str] = []

    class Output:
        def line(self, text: str, level: str = "info") -> None:
            lines.append(text)

        def table(self, points: Any) -> None:
            lines.append(format_table(points))

    out_json = tmp_path / "k8s-bench.json"
    argv = [x for url in urls for x in ("--url", url)]
    argv += ["--concurrency", "2", "--num-requests", "8", "--warmup", "0", "--max-tokens", "4"]
    argv += ["--num-images", "2", "--image-sizes", "64x48", "--no-self-check"]
    argv += ["--json", str(out_json)]
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    status = await bench_cli.run(parser.parse_args(argv), Output())
    (point,) = orjson.loads(out_json.read_bytes())
    return status, "\n".join(lines), point


async def test_two_replicas_two_port_forwards_both_serve(
    pod_cluster: Cluster, api: Any, namespace: str, image_factory: Any, tmp_path: Path
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
        # nim-async bench takes the same endpoints (--url per pod)
        status, text, point = await bench(result.endpoints, tmp_path)
        assert status == 0, text
        assert point["completed"] == point["num_requests"] == 8
        assert sorted(e["url"] for e in point["endpoints"]) == sorted(result.endpoints)
        assert sum(e["completed"] for e in point["endpoints"]) == 8
    assert await AsyncNIMDeployer.stop(
        result.container_name, quiet=True, backend="kubernetes", **options
    )
    assert await labelled(api, namespace) == {}


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
async def test_cli_deploy_port_forward_serves_until_ctrl_c(
    pod_cluster: Cluster, api: Any, namespace: str, signum: int, status: int
) -> None:
    reg = registry_env()
    port = free_port()
    common = ["--kubernetes", "--namespace", namespace, "--kubeconfig", pod_cluster.kubeconfig]
    env = {**os.environ, "NGC_API_KEY": reg["NIM_TEST_NGC_KEY"]}
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nim_async.cli", "deploy", "--json", "--quiet", "--port-forward",
        "--registry", reg["NIM_TEST_REGISTRY_PATH"], "--image-name", reg["NIM_TEST_IMAGE_NAME"],
        "--tag", reg["NIM_TEST_IMAGE_TAG"], "--gpus", "none", "--shm-size", "64MB",
        "--port", str(port), "--startup-timeout", "240", *common,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert deploy.stdout is not None
    assert deploy.stderr is not None
    try:
        line = await asyncio.wait_for(deploy.stdout.readline(), 240)
        assert line, (await deploy.stderr.read()).decode()
        import orjson

        payload = orjson.loads(line)
        assert payload["base_url"] == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:  # the forward is open while the command runs
            ready = await http.get(f"{payload['base_url']}/v1/health/ready")
        assert ready.status_code == 200
    finally:
        if deploy.returncode is None:
            deploy.send_signal(signum)
        _, err = await asyncio.wait_for(deploy.communicate(), 60)
    assert deploy.returncode == status, err.decode()
    if signum == signal.SIGTERM:  # it says what ended, and not that anything was removed
        assert "port-forward closed" in err.decode()
        assert "removed" not in err.decode()
    assert reg["NIM_TEST_NGC_KEY"] not in err.decode() + line.decode()
    with pytest.raises(httpx.ConnectError):  # Ctrl-C closed the forward ...
        async with httpx.AsyncClient() as http:
            await http.get(f"{payload['base_url']}/v1/health/ready")
    # ... and left the pods (as the command says); stop removes them
    assert "pods" in await everything(api, namespace)
    stop = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nim_async.cli", "stop", payload["container_name"], *common,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(stop.communicate(), 120)
    assert stop.returncode == 0, out.decode()
    assert await everything(api, namespace) == {}


async def test_stop_deletes_pods_left_after_its_grace_at_once(
    pod_cluster: Cluster, api: Any, namespace: str
) -> None:
    from nim_async.deploy.events import Notice
    from nim_async.deploy.kubernetes import KubernetesBackend

    events: list[Any] = []
    backend = KubernetesBackend(
        emulator_config(registry_env()),
        namespace=namespace,
        kubeconfig=pod_cluster.kubeconfig,
        on_event=events.append,
    )
    result = await backend.deploy()
    assert "pods" in await everything(api, namespace)
    # no pod terminates within 10 ms: what the grace leaves is deleted with grace 0
    assert await backend.stop(result.container_name, grace=0.01) is True
    warnings = [e.text for e in events if isinstance(e, Notice)]
    assert any("still there after 0.01 s; deleted with grace 0" in w for w in warnings), warnings
    assert await everything(api, namespace) == {}
