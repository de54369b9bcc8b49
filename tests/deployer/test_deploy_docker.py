"""AsyncNIMDeployer / NIMDeployer against the real Docker engine and the authenticated local
registry (scripts/test-env.sh). The NIM image is the emulator's (an emulator, not a model)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from rich.console import Console

from nim_async.config import CONTAINER_CACHE_DIR, NIMConfig
from nim_async.deploy.deployer import CONFIG_HASH_LABEL, MANAGED_LABEL, AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient
from nim_async.errors import (
    ContainerExistsError,
    ContainerExitedError,
    GPURuntimeError,
    ImagePullError,
    NIMDeploymentError,
    PortInUseError,
    RegistryAuthError,
    ServiceNotReadyError,
)
from nim_async.results import NIMDeploymentResult
from nim_async.sync.deployer import NIMDeployer

pytestmark = pytest.mark.docker

MakeConfig = Callable[..., NIMConfig]


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False, color_system=None), out


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(url)


async def test_fresh_deploy_pulls_with_progress_and_configures_container(
    nim_config: MakeConfig,
    docker_env: Any,
    docker_client: DockerClient,
    remove_test_images: Callable[[], Awaitable[None]],
    tmp_path: Any,
) -> None:
    await remove_test_images()
    assert not await docker_client.image_exists(docker_env.image)
    config = nim_config(stream_logs=True, max_model_len=4096)
    console, out = _console()
    async with AsyncNIMDeployer(config, console=console) as deployer:
        result = await deployer.deploy()

    # result
    assert isinstance(result, NIMDeploymentResult)
    assert result.container_name == config.served_model_name
    assert result.port == config.port
    assert result.served_model_name == config.served_model_name
    assert result.available_models == [config.served_model_name]
    assert not result.reused
    assert (await _get(f"{result.base_url}/v1/health/ready")).status_code == 200

    # it really pulled, with per-layer progress, bytes and speed; logs were streamed
    assert await docker_client.image_exists(docker_env.image)
    text = out.getvalue()
    assert f"Pulling {docker_env.image}" in text
    assert text.count("layer ") >= 3
    assert "Pull complete" in text
    assert "MB/s" in text
    assert f"{config.container_name} | " in text
    assert "emulator" in text
    assert docker_env.ngc_key not in text

    # the container as docker inspect sees it
    info = await docker_client.inspect_container(result.container_id)
    assert info is not None
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["NGC_API_KEY"] == docker_env.ngc_key
    assert env["NIM_MAX_MODEL_LEN"] == "4096"
    assert env["NIM_SERVED_MODEL_NAME"] == config.served_model_name
    assert "NIM_MODEL_NAME" not in env
    host_config = info["HostConfig"]
    assert host_config["ShmSize"] == 64 * 1024 * 1024
    assert host_config["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(config.port)}]
    }
    assert host_config["AutoRemove"] is False
    assert not host_config.get("DeviceRequests")
    assert info["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    cache = mounts[CONTAINER_CACHE_DIR]
    assert cache["Type"] == "bind"
    assert cache["Source"] == str(config.cache_dir.resolve())
    assert cache["RW"] is True
    labels = info["Config"]["Labels"]
    assert labels[MANAGED_LABEL] == "true"
    assert labels[CONFIG_HASH_LABEL] == config.config_hash()


async def test_skip_pull_when_present_and_force_pull(
    nim_config: MakeConfig, docker_env: Any, derived_image: Any
) -> None:
    await derived_image()  # makes sure the emulator image is present locally
    console, out = _console()
    config = nim_config()
    await AsyncNIMDeployer(config, console=console).deploy()
    assert "present; not pulling" in out.getvalue()
    assert "Pulling" not in out.getvalue()

    console, out = _console()
    forced = nim_config(force_pull=True)
    result = await AsyncNIMDeployer(forced, console=console).deploy()
    assert f"Pulling {docker_env.image}" in out.getvalue()
    assert result.available_models == [forced.served_model_name]


async def test_reuse_running_container(nim_config: MakeConfig) -> None:
    config = nim_config()
    first = await AsyncNIMDeployer(config, quiet=True).deploy()
    second = await AsyncNIMDeployer(config, quiet=True).deploy()
    assert second.reused
    assert second.container_id == first.container_id
    assert second.port == first.port
    assert second.available_models == [config.served_model_name]
    assert second.served_model_name == config.served_model_name


async def test_auto_kill_replaces_container(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config()
    first = await AsyncNIMDeployer(config, quiet=True).deploy()
    replace = config.model_copy(
        update={"use_existing_container": False, "auto_kill_existing_container": True}
    )
    second = await AsyncNIMDeployer(replace, quiet=True).deploy()
    assert not second.reused
    assert second.container_id != first.container_id
    assert await docker_client.inspect_container(first.container_id) is None


async def test_existing_container_without_reuse_or_kill(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config()
    first = await AsyncNIMDeployer(config, quiet=True).deploy()
    strict = config.model_copy(update={"use_existing_container": False})
    with pytest.raises(ContainerExistsError) as err:
        await AsyncNIMDeployer(strict, quiet=True).deploy()
    assert err.value.container_name == config.container_name
    # the existing container is left alone
    info = await docker_client.inspect_container(first.container_id)
    assert info is not None
    assert info["State"]["Running"]


async def test_wrong_key_is_unauthorized_and_names_the_key(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    wrong = "nvapi-this-key-is-wrong-0000000000"
    config = nim_config(nvidia_api_key=wrong, force_pull=True)
    with pytest.raises(RegistryAuthError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    message = str(err.value)
    assert "NGC API key" in message
    assert "$oauthtoken" in message
    assert wrong not in message
    assert wrong not in repr(err.value)
    assert await docker_client.inspect_container(config.container_name) is None


async def test_container_dying_during_startup_fails_fast_with_logs(
    nim_config: MakeConfig, derived_image: Any, docker_client: DockerClient
) -> None:
    tag = await derived_image("--startup-seconds", "60", "--exit-after", "0.5")
    config = nim_config(tag=tag, startup_timeout=120)
    deployer = AsyncNIMDeployer(config, quiet=True)
    with pytest.raises(ContainerExitedError) as err:
        await deployer.deploy()
    assert err.value.container_name == config.container_name
    assert err.value.exit_code != 0
    assert not err.value.oom_killed
    assert "exit-after" in err.value.logs or "exit_after" in err.value.logs
    assert "Last log lines" in str(err.value)
    assert isinstance(err.value, NIMDeploymentError)
    # it did not wait for the timeout: the exit was noticed, not the deadline
    assert deployer.timings.exited is not None
    assert deployer.timings.ready is None
    assert await docker_client.inspect_container(config.container_name) is None


async def test_never_ready_raises_service_not_ready(
    nim_config: MakeConfig, derived_image: Any, docker_client: DockerClient
) -> None:
    tag = await derived_image("--startup-seconds", "600")
    config = nim_config(tag=tag, startup_timeout=1.5)
    with pytest.raises(ServiceNotReadyError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert err.value.timeout == 1.5
    assert err.value.container_name == config.container_name
    assert "startup_timeout" in str(err.value)
    assert await docker_client.inspect_container(config.container_name) is None


async def test_gpu_request_without_gpu_runtime(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config(gpus="all")
    with pytest.raises(GPURuntimeError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert "NVIDIA Container Toolkit" in str(err.value)
    assert "could not select device driver" in str(err.value)
    assert await docker_client.inspect_container(config.container_name) is None


async def test_gpu_device_ids_request_without_gpu_runtime(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config(gpus=["0"])
    with pytest.raises(GPURuntimeError):
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert await docker_client.inspect_container(config.container_name) is None


async def test_port_in_use(nim_config: MakeConfig, docker_client: DockerClient) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = nim_config(port=port)
        with pytest.raises(PortInUseError) as err:
            await AsyncNIMDeployer(config, quiet=True).deploy()
    assert err.value.port == port
    assert str(port) in str(err.value)
    assert await docker_client.inspect_container(config.container_name) is None


async def test_cancel_during_readiness_removes_container(
    nim_config: MakeConfig, derived_image: Any, docker_client: DockerClient
) -> None:
    tag = await derived_image("--startup-seconds", "600")
    config = nim_config(tag=tag, startup_timeout=300)
    task = asyncio.create_task(AsyncNIMDeployer(config, quiet=True).deploy())
    for _ in range(200):
        info = await docker_client.inspect_container(config.container_name)
        if info is not None and info["State"]["Running"]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the container never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await docker_client.inspect_container(config.container_name) is None


async def test_stop_true_then_false_and_list(nim_config: MakeConfig) -> None:
    config = nim_config()
    result = await AsyncNIMDeployer(config, quiet=True).deploy()
    listed = {c.name: c for c in await AsyncNIMDeployer.list()}
    status = listed[config.container_name]
    assert status.container_id == result.container_id
    assert status.state == "running"
    assert status.port == config.port
    assert status.served_model_name == config.served_model_name
    assert status.config_hash == config.config_hash()
    single = await AsyncNIMDeployer.status(config.container_name)
    assert single is not None
    assert single.container_id == result.container_id
    assert single.state == "running"
    assert (single.host, single.port) == ("127.0.0.1", config.port)
    assert single.served_model_name == config.served_model_name
    assert await AsyncNIMDeployer.stop(config.container_name, quiet=True, grace=5) is True
    assert await AsyncNIMDeployer.stop(config.container_name, quiet=True) is False
    assert config.container_name not in {c.name for c in await AsyncNIMDeployer.list()}
    assert await AsyncNIMDeployer.status(config.container_name) is None


async def test_quiet_prints_nothing(
    nim_config: MakeConfig, derived_image: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    await derived_image()
    config = nim_config(stream_logs=True, force_pull=True)
    await AsyncNIMDeployer(config, quiet=True).deploy()
    assert await AsyncNIMDeployer.stop(config.container_name, quiet=True, grace=5)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_sync_facade_deploy_reuse_stop(nim_config: MakeConfig) -> None:
    config = nim_config()
    with NIMDeployer(config, quiet=True) as deployer:
        result = deployer.deploy()
        assert result.available_models == [config.served_model_name]
        again = deployer.deploy()
        assert again.reused
        assert again.container_id == result.container_id
    names = {c.name for c in NIMDeployer.list()}
    assert config.container_name in names
    status = NIMDeployer.status(config.container_name)
    assert status is not None
    assert status.state == "running"
    assert NIMDeployer.stop(config.container_name, quiet=True, grace=5) is True
    assert NIMDeployer.stop(config.container_name, quiet=True) is False


async def test_exited_container_is_not_reused(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config()
    first = await AsyncNIMDeployer(config, quiet=True).deploy()
    await docker_client.stop_container(first.container_id, grace=2)
    with pytest.raises(ContainerExistsError):
        await AsyncNIMDeployer(config, quiet=True).deploy()
    replace = config.model_copy(update={"auto_kill_existing_container": True})
    second = await AsyncNIMDeployer(replace, quiet=True).deploy()
    assert second.container_id != first.container_id
    assert not second.reused


async def test_missing_tag_is_an_image_pull_error(
    nim_config: MakeConfig, docker_client: DockerClient
) -> None:
    config = nim_config(tag="no-such-tag-here")
    with pytest.raises(ImagePullError) as err:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert "no-such-tag-here" in str(err.value)
    assert config.nvidia_api_key.get_secret_value() not in str(err.value)
    assert await docker_client.inspect_container(config.container_name) is None


_CTRL_C_SCRIPT = """
import json, sys
from nim_async.config import NIMConfig
from nim_async.sync.deployer import NIMDeployer
config = NIMConfig(**json.loads(sys.argv[1]))
try:
    NIMDeployer(config, quiet=True).deploy()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("deploy returned", flush=True)
"""


async def test_ctrl_c_in_sync_deploy_removes_container(
    nim_config: MakeConfig, derived_image: Any, docker_client: DockerClient, docker_env: Any
) -> None:
    tag = await derived_image("--startup-seconds", "600")
    config = nim_config(tag=tag, startup_timeout=300)
    fields = config.model_dump(mode="json", exclude={"nvidia_api_key", "secret_key"})
    fields["nvidia_api_key"] = docker_env.ngc_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CTRL_C_SCRIPT,
        orjson.dumps(fields).decode(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(600):
            info = await docker_client.inspect_container(config.container_name)
            if info is not None and info["State"]["Running"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the container never started")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert out.decode().strip() == "interrupted"
    assert await docker_client.inspect_container(config.container_name) is None
