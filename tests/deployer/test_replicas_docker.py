"""NIMConfig(replicas=N) against the real Docker engine and the authenticated local registry
(scripts/test-env.sh): N emulator containers as one deployment. The image is the emulator's
(an emulator, not a model)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient
from nim_async.deploy.events import DeployEvent, DeployState, StateChanged
from nim_async.deploy.spec import DEPLOYMENT_LABEL, REPLICA_LABEL, REPLICAS_LABEL
from nim_async.errors import (
    ContainerExistsError,
    ContainerExitedError,
    GPURuntimeError,
    PortInUseError,
)
from nim_async.sync.deployer import NIMDeployer

pytestmark = pytest.mark.docker

MakeConfig = Callable[..., NIMConfig]


async def _ready(url: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return (await client.get(f"{url}/v1/health/ready")).status_code


async def _members(client: DockerClient, deployment: str) -> list[dict[str, Any]]:
    """Every container (any state) labelled as a replica of ``deployment``."""
    return await client.list_containers(labels={DEPLOYMENT_LABEL: deployment})


def _names(deployment: str, n: int) -> list[str]:
    return [deployment] + [f"{deployment}-r{i}" for i in range(1, n)]


async def test_three_replicas_start_on_distinct_ports_are_listed_and_stopped(
    nim_config: MakeConfig, free_ports: Callable[[int], int], docker_client: DockerClient
) -> None:
    port = free_ports(3)
    config = nim_config(port=port, replicas=3)
    name = config.container_name
    events: list[DeployEvent] = []
    deployer = AsyncNIMDeployer(config, on_event=events.append)
    result = await deployer.deploy()

    assert result.container_name == name
    assert result.port == port
    assert result.endpoints == [f"http://127.0.0.1:{port + i}" for i in range(3)]
    assert result.available_models == [config.served_model_name]
    assert not result.reused
    assert [await _ready(url) for url in result.endpoints] == [200, 200, 200]
    starting = [
        e.container for e in events if isinstance(e, StateChanged) and e.state == "starting"
    ]
    assert sorted(starting) == sorted(_names(name, 3))
    ready = [e for e in events if isinstance(e, StateChanged) and e.state == DeployState.READY]
    assert len(ready) == 1
    assert "3 replicas ready" in ready[0].message

    # the containers as docker inspect sees them: one deployment, one port each
    for i, replica in enumerate(_names(name, 3)):
        info = await docker_client.inspect_container(replica)
        assert info is not None
        assert info["State"]["Running"]
        labels = info["Config"]["Labels"]
        assert (labels[DEPLOYMENT_LABEL], labels[REPLICA_LABEL], labels[REPLICAS_LABEL]) == (
            name,
            str(i),
            "3",
        )
        assert info["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostPort"] == str(port + i)
    assert result.container_id == (await docker_client.inspect_container(name) or {})["Id"]

    listed = [c for c in await AsyncNIMDeployer.list() if c.deployment == name]
    assert sorted((c.replica, c.name, c.port, c.state) for c in listed) == [
        (i, n, port + i, "running") for i, n in enumerate(_names(name, 3))
    ]

    stop_events: list[DeployEvent] = []
    assert await AsyncNIMDeployer.stop(name, grace=5, on_event=stop_events.append) is True
    removed = [e.container for e in stop_events if isinstance(e, StateChanged)]
    assert {"removed"} <= {e.state for e in stop_events if isinstance(e, StateChanged)}
    assert set(_names(name, 3)) <= set(removed)
    assert await _members(docker_client, name) == []
    assert await AsyncNIMDeployer.stop(name, quiet=True) is False


def test_sync_facade_two_replicas_reused_then_stopped(
    nim_config: MakeConfig, free_ports: Callable[[int], int]
) -> None:
    config = nim_config(port=free_ports(2), replicas=2)
    with NIMDeployer(config, quiet=True) as deployer:
        first = deployer.deploy()
        assert len(first.endpoints) == 2
        again = deployer.deploy()
    assert again.reused
    assert again.container_id == first.container_id
    assert again.endpoints == first.endpoints
    assert again.available_models == [config.served_model_name]
    assert NIMDeployer.stop(config.container_name, quiet=True, grace=5) is True
    assert [c for c in NIMDeployer.list() if c.deployment == config.container_name] == []


async def test_existing_set_refused_replaced_and_partial(
    nim_config: MakeConfig, free_ports: Callable[[int], int], docker_client: DockerClient
) -> None:
    config = nim_config(port=free_ports(2), replicas=2)
    name = config.container_name
    first = await AsyncNIMDeployer(config, quiet=True).deploy()

    # reuse off: ContainerExistsError for the set; both are left running
    strict = config.model_copy(update={"use_existing_container": False})
    with pytest.raises(ContainerExistsError) as err:
        await AsyncNIMDeployer(strict, quiet=True).deploy()
    assert err.value.container_name == name
    message = str(err.value)
    assert f"{name}-r1 (running)" in message
    assert "use_existing_container=True" in message
    assert "auto_kill_existing_container=True" in message
    states = [
        (await docker_client.inspect_container(n) or {}).get("State", {}) for n in _names(name, 2)
    ]
    assert all(s.get("Running") for s in states)

    # one replica gone: the set is not reused (and not half-reused), it is refused...
    await docker_client.remove_container(f"{name}-r1", force=True)
    with pytest.raises(ContainerExistsError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert "every replica runs" in str(err.value)
    assert "use_existing_container=True" not in str(err.value)

    # ...or replaced as a whole
    replace = config.model_copy(update={"auto_kill_existing_container": True})
    second = await AsyncNIMDeployer(replace, quiet=True).deploy()
    assert not second.reused
    assert second.container_id != first.container_id
    assert await docker_client.inspect_container(first.container_id) is None
    assert len(await _members(docker_client, name)) == 2

    # fewer replicas than are running: the extra one blocks reuse; auto-kill removes it too
    one = nim_config(
        port=config.port, served_model_name=name, replicas=1, auto_kill_existing_container=False
    )
    with pytest.raises(ContainerExistsError) as err:
        await AsyncNIMDeployer(one, quiet=True).deploy()
    assert f"{name}-r1" in str(err.value)
    replaced = await AsyncNIMDeployer(
        one.model_copy(update={"auto_kill_existing_container": True}), quiet=True
    ).deploy()
    assert replaced.endpoints == [f"http://127.0.0.1:{config.port}"]
    assert [m["Names"] for m in await _members(docker_client, name)] == [[f"/{name}"]]


async def test_a_taken_port_of_the_range_starts_nothing(
    nim_config: MakeConfig, free_ports: Callable[[int], int], docker_client: DockerClient
) -> None:
    port = free_ports(3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port + 2))
        sock.listen()
        config = nim_config(port=port, replicas=3)
        with pytest.raises(PortInUseError) as err:
            await AsyncNIMDeployer(config, quiet=True).deploy()
    assert err.value.port == port + 2
    message = str(err.value)
    assert f"Port {port + 2} is already in use" in message
    assert "replica 2 of 3" in message
    assert "nothing was started" in message
    assert await _members(docker_client, config.container_name) == []
    for replica in _names(config.container_name, 3):
        assert await docker_client.inspect_container(replica) is None


async def test_one_replica_dying_at_start_fails_the_deploy_naming_it(
    nim_config: MakeConfig,
    free_ports: Callable[[int], int],
    derived_image: Any,
    docker_client: DockerClient,
) -> None:
    # never ready (the image answers 503 for 600 s); replica 1 is killed while it starts
    tag = await derived_image("--startup-seconds", "600")
    config = nim_config(tag=tag, port=free_ports(3), replicas=3, startup_timeout=120)
    name = config.container_name
    deployer = AsyncNIMDeployer(config, quiet=True)
    task = asyncio.create_task(deployer.deploy())
    victim = f"{name}-r1"
    for _ in range(400):  # until it runs and has logged (its last lines are in the error)
        info = await docker_client.inspect_container(victim)
        if (
            info is not None
            and info["State"]["Running"]
            and await docker_client.container_logs(victim, tail=5)
        ):
            break
        await asyncio.sleep(0.025)
    else:
        pytest.fail("replica 1 never started")
    killed_at = time.perf_counter()
    kill = await asyncio.create_subprocess_exec(
        "docker", "kill", victim, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert await kill.wait() == 0
    with pytest.raises(ContainerExitedError) as err:
        await task
    assert time.perf_counter() - killed_at < 30  # noticed, not the 120 s deadline
    assert err.value.container_name == victim
    assert err.value.exit_code == 137
    message = str(err.value)
    assert message.startswith(
        f"Replica 1 of 3 ({victim!r}, host port {config.port + 1}) failed, so"
    )
    assert "removes all 3 containers" in message
    assert "Last log lines" in message
    assert "emulator" in err.value.logs
    assert deployer.timings.exited is not None
    assert await _members(docker_client, name) == []


async def test_replicas_that_exit_at_start_leave_nothing(
    nim_config: MakeConfig,
    free_ports: Callable[[int], int],
    derived_image: Any,
    docker_client: DockerClient,
) -> None:
    tag = await derived_image("--startup-seconds", "60", "--exit-after", "0.5")
    config = nim_config(tag=tag, port=free_ports(2), replicas=2, startup_timeout=120)
    with pytest.raises(ContainerExitedError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert err.value.container_name in _names(config.container_name, 2)
    assert str(err.value).startswith("Replica ")
    assert "exit-after" in err.value.logs or "exit_after" in err.value.logs
    assert await _members(docker_client, config.container_name) == []


def _device_requests(name: str) -> Any:
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{json .HostConfig.DeviceRequests}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return orjson.loads(done.stdout)


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ("all", [["0"], ["1"]]),
        ([["0", "1"], ["2", "3"]], [["0", "1"], ["2", "3"]]),
    ],
)
async def test_gpus_one_device_or_group_per_replica(
    nim_config: MakeConfig,
    free_ports: Callable[[int], int],
    docker_client: DockerClient,
    gpus: Any,
    expected: list[list[str]],
) -> None:
    # No GPU here: each replica's start fails, so the request each was created with is read
    # while it exists (the sink runs on the loop, before the replica is started).
    seen: dict[str, Any] = {}

    def on_event(event: DeployEvent) -> None:
        if isinstance(event, StateChanged) and event.state == DeployState.STARTING:
            seen[event.container] = _device_requests(event.container)

    config = nim_config(port=free_ports(2), replicas=2, gpus=gpus)
    with pytest.raises(GPURuntimeError) as err:
        await AsyncNIMDeployer(config, on_event=on_event).deploy()
    assert str(err.value).startswith("Replica ")
    assert "NVIDIA Container Toolkit" in str(err.value)
    names = _names(config.container_name, 2)
    assert set(seen) == set(names)
    for name, ids in zip(names, expected, strict=True):
        assert seen[name] == [
            {
                "Driver": "",
                "Count": 0,
                "DeviceIDs": ids,
                "Capabilities": [["gpu"]],
                "Options": None,
            }
        ]
    assert await _members(docker_client, config.container_name) == []


async def test_cancel_while_replicas_start_removes_them_all(
    nim_config: MakeConfig,
    free_ports: Callable[[int], int],
    derived_image: Any,
    docker_client: DockerClient,
) -> None:
    tag = await derived_image("--startup-seconds", "600")
    config = nim_config(tag=tag, port=free_ports(2), replicas=2, startup_timeout=300)
    task = asyncio.create_task(AsyncNIMDeployer(config, quiet=True).deploy())
    names = _names(config.container_name, 2)
    for _ in range(400):
        infos = [await docker_client.inspect_container(n) for n in names]
        if all(i is not None and i["State"]["Running"] for i in infos):
            break
        await asyncio.sleep(0.025)
    else:
        pytest.fail("the replicas never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _members(docker_client, config.container_name) == []
