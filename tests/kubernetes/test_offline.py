"""The Kubernetes backend without a cluster: the IO-free builders and readers, the refusals."""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio")

from nim_async.deploy.kubernetes import KubernetesBackend
from nim_async.deploy.kubernetes.pods import (
    FailureKind,
    ServiceState,
    nimservice_state,
    pod_failure,
    pod_ready,
)
from nim_async.errors import InvalidConfigError

from .test_crd_tier import make_config


def waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "nim",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ]
        },
    }


def test_pull_refused_is_registry_auth() -> None:
    failure = pod_failure(
        waiting("ErrImagePull", "failed to pull: unexpected status: 401 Unauthorized")
    )
    assert failure is not None
    assert failure.kind is FailureKind.REGISTRY_AUTH


def test_missing_image_is_image_pull() -> None:
    failure = pod_failure(waiting("ErrImagePull", "failed to resolve reference: not found"))
    assert failure is not None
    assert failure.kind is FailureKind.IMAGE_PULL


def test_creating_is_no_failure() -> None:
    assert pod_failure(waiting("ContainerCreating", "")) is None


def test_unschedulable_for_gpu() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    failure = pod_failure(pod)
    assert failure is not None
    assert failure.kind is FailureKind.NO_GPU


def test_crash_loop() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "nim",
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
                }
            ]
        },
    }
    failure = pod_failure(pod)
    assert failure is not None
    assert failure.kind is FailureKind.CRASHED
    assert failure.exit_code == 3


def test_ready_and_deleting() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert pod_ready(pod)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pod_ready(pod)


def test_nimservice_states() -> None:
    assert nimservice_state({})[0] is ServiceState.WAITING
    assert nimservice_state({"status": {"state": "Ready"}})[0] is ServiceState.READY
    assert nimservice_state({"status": {"state": "Failed"}})[0] is ServiceState.FAILED
    failed = {
        "status": {
            "state": "NotReady",
            "conditions": [{"type": "NIM_SERVICE_FAILED", "status": "True"}],
        }
    }
    assert nimservice_state(failed)[0] is ServiceState.FAILED


async def test_unreachable_api_server_is_api_error(tmp_path: Any) -> None:
    from nim_async.errors import APIError

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n"
        "- name: c\n  cluster: {server: 'https://127.0.0.1:9'}\n"
        "users:\n- name: u\n  user: {token: t}\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
        "current-context: x\n"
    )
    backend = KubernetesBackend(make_config(), kubeconfig=str(kubeconfig))
    with pytest.raises(APIError, match="cannot reach the Kubernetes API server"):
        await backend.deploy()


async def test_custom_weights_not_yet_supported(tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text("{}")
    try:
        config = make_config(model_path=str(tmp_path))
    except InvalidConfigError:
        pytest.skip("model_path validation needs a full checkpoint")
    backend = KubernetesBackend(config, kubeconfig=os.devnull)
    with pytest.raises(InvalidConfigError, match="not yet supported on Kubernetes"):
        await backend.deploy()


@pytest.mark.parametrize(
    ("gpus", "replicas", "per_pod"),
    [
        (None, 3, None),
        ("all", 1, 1),
        ("all", 3, 1),
        (2, 2, 2),
        (["0", "1", "2", "3"], 2, 2),
        ([["0", "1"], ["2", "3"]], 2, 2),
    ],
)
def test_replicas_are_the_deployments_and_gpus_a_share_per_pod(
    gpus: Any, replicas: int, per_pod: int | None
) -> None:
    from nim_async.deploy.kubernetes import manifests

    config = make_config(gpus=gpus, replicas=replicas)
    settings = manifests.KubeSettings(namespace="ns")
    deployment = manifests.deployment(config, settings)
    assert deployment["spec"]["replicas"] == replicas
    assert manifests.nim_service(config, settings)["spec"]["replicas"] == replicas
    assert manifests.gpu_count(config) == per_pod
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert limits == ({} if per_pod is None else {"limits": {"nvidia.com/gpu": str(per_pod)}})


async def test_gpu_groups_of_different_sizes_are_refused_before_any_call() -> None:
    config = make_config(gpus=[["0", "1"], ["2"]], replicas=2)
    backend = KubernetesBackend(config, kubeconfig=os.devnull)
    with pytest.raises(InvalidConfigError) as err:
        await backend.deploy()
    assert err.value.field == "gpus"
    assert "groups of 1 and 2 GPUs" in str(err.value)


WITHOUT_EXTRA = """
import asyncio, sys

class NoKubernetesAsyncio:  # this interpreter behaves as if the extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "kubernetes_asyncio" or name.startswith("kubernetes_asyncio."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoKubernetesAsyncio())
from nim_async import AsyncNIMDeployer, NIMConfig
from nim_async.errors import InvalidConfigError

async def main() -> None:
    config = NIMConfig(nvidia_api_key="nvapi-" + "0" * 60, gpus=None)
    calls = [
        lambda: AsyncNIMDeployer(config, quiet=True, backend="kubernetes").deploy(),
        lambda: AsyncNIMDeployer.stop("x", quiet=True, backend="kubernetes"),
        lambda: AsyncNIMDeployer.list(backend="kubernetes"),
    ]
    for call in calls:
        try:
            await call()
        except InvalidConfigError as exc:
            print(exc.field, "|", exc)
        else:
            print("no error")
    print("loaded:", any(m.startswith("kubernetes_asyncio") for m in sys.modules))

asyncio.run(main())
"""


def test_without_the_extra_a_clear_error_names_it() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line in lines[:3]:  # deploy, stop and list each say what to install
        assert line.startswith("backend | "), line
        assert "pip install 'nim-async[kubernetes]'" in line
    assert lines[3] == "loaded: False"


def test_the_cli_without_the_extra_says_what_to_install() -> None:
    import subprocess
    import sys

    script = WITHOUT_EXTRA.split("from nim_async import")[0] + (
        "from nim_async.cli import main\nsys.exit(main(['ps', '--kubernetes']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pip install 'nim-async[kubernetes]'" in done.stderr
    assert "Traceback" not in done.stderr


class _Kubelet:
    """Answers pod_log as a kubelet does while a fast-restarting container's runs come and go."""

    def __init__(self, answers: list[tuple[bool, str]]) -> None:
        self.answers = answers
        self.asked: list[bool] = []

    async def pod_log(self, name: str, namespace: str, *, tail: int, previous: bool) -> str:
        self.asked.append(previous)
        return self.answers.pop(0)[1] if self.answers else ""


async def test_a_crash_log_falls_back_to_the_current_run_then_waits() -> None:
    from nim_async.deploy.kubernetes.backend import _crash_log

    kubelet = _Kubelet([(True, ""), (False, "emulator: --exit-after reached\n")])
    assert "exit-after" in await _crash_log(kubelet, "p", "ns")  # type: ignore[arg-type]
    assert kubelet.asked == [True, False]
    # neither run has a log at first: it looks again, and gives up after three looks
    late = _Kubelet([(True, ""), (False, ""), (True, "late line\n")])
    assert await _crash_log(late, "p", "ns") == "late line\n"  # type: ignore[arg-type]
    never = _Kubelet([])
    assert await _crash_log(never, "p", "ns") == ""  # type: ignore[arg-type]
    assert never.asked == [True, False] * 3
