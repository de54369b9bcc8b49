"""Errors that name the real cause, and validation errors that are nim_async's own.

The Docker cases run against the real dockerd and the local registry (``docker`` marker); the
rest need nothing outside this process.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from nim_async import NIMConfig, NIMSamplingParams
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient
from nim_async.errors import (
    ContainerExistsError,
    ImagePullError,
    InvalidConfigError,
    NIMError,
    RegistryAuthError,
)

from .conftest import DockerEnv, free_port, run_cli


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": math.nan}, "top_p"),
        ({"presence_penalty": -math.inf}, "presence_penalty"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
def test_sampling_errors_are_ours_and_value_errors(given: dict[str, Any], field: str) -> None:
    with pytest.raises(NIMError) as caught:
        NIMSamplingParams(**given)
    error = caught.value
    assert isinstance(error, ValueError)
    assert type(error).__name__ == "InvalidParameterError"  # HEAD: pydantic's ValidationError
    assert type(error).__module__ == "nim_async.errors"
    assert error.field == field  # type: ignore[attr-defined]
    assert str(error).startswith(f"Invalid NIMSamplingParams: {field}: ")
    assert error.__cause__ is None  # no pydantic type chained


def test_relations_between_fields_are_ours_too() -> None:
    with pytest.raises(ValueError, match="min_tokens \\(5\\) must not exceed max_tokens \\(2\\)"):
        NIMSamplingParams(min_tokens=5, max_tokens=2)


def test_config_port_as_text() -> None:
    assert NIMConfig(nvidia_api_key="nvapi-test-0000", port="8000").port == 8000  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="port: Input should be a valid integer"):
        NIMConfig(nvidia_api_key="nvapi-test-0000", port="80 00")  # type: ignore[arg-type]


async def test_stop_with_an_empty_name_is_a_usage_error(tmp_path: Path) -> None:
    done = await run_cli("stop", "", cwd=tmp_path, env=None)
    assert done.rc == 2, done.err  # HEAD: 1, "Cannot reach the Docker daemon"
    assert "NAME must be a container name or id, got ''" in done.err
    assert "Docker daemon" not in done.err
    with pytest.raises(InvalidConfigError, match="container_name must be a container name"):
        await AsyncNIMDeployer.stop("  ", quiet=True)
    with pytest.raises(InvalidConfigError):
        await AsyncNIMDeployer.status("")


def test_container_exists_advice_names_no_default() -> None:
    config = NIMConfig(nvidia_api_key="nvapi-test-0000", served_model_name="x")
    assert config.use_existing_container is True  # the default
    assert "use_existing_container" not in str(ContainerExistsError("x"))  # HEAD named it

    from nim_async.deploy.replicas import exists_advice
    from nim_async.deploy.spec import MANAGED_LABEL

    ours = {"Config": {"Labels": {MANAGED_LABEL: "true"}}}
    exited = exists_advice(config, {**ours, "State": {"Running": False, "Status": "exited"}})
    assert "is not running (status exited)" in exited
    assert "use_existing_container" not in exited
    assert "auto_kill_existing_container=True" in exited
    off = NIMConfig(
        nvidia_api_key="nvapi-test-0000", served_model_name="x", use_existing_container=False
    )
    running = exists_advice(off, {**ours, "State": {"Running": True}})
    assert "set use_existing_container=True to reuse it" in running


def _config(env: DockerEnv, **changes: Any) -> NIMConfig:
    values: dict[str, Any] = {
        "nvidia_api_key": env.ngc_key,
        "registry": env.registry_path,
        "image_name": env.image_name,
        "tag": env.tag,
        "served_model_name": f"nimerr-{uuid.uuid4().hex[:10]}",
        "port": free_port(),
        "gpus": None,
        "shm_size": "64MB",
        "startup_timeout": 60.0,
        "stream_logs": False,
    }
    values.update(changes)
    return NIMConfig(**values)


@pytest.mark.docker
async def test_a_registry_that_refuses_connections_is_unreachable_not_unauthorized(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    port = free_port()  # nobody listens there
    config = _config(
        docker_env,
        registry=f"127.0.0.1:{port}/nim/nvidia",
        force_pull=True,
        local_cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ImagePullError) as caught:
        await AsyncNIMDeployer(config, quiet=True).deploy()
    assert not isinstance(caught.value, RegistryAuthError)  # HEAD: "check that the key is valid"
    message = str(caught.value)
    assert f"registry at 127.0.0.1:{port} is unreachable (connection refused)" in message
    assert "key" not in message.lower()
    assert docker_env.ngc_key not in message


@pytest.mark.docker
async def test_a_same_named_container_not_ours_fails_at_once(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    config = _config(docker_env, local_cache_dir=str(tmp_path / "cache"))
    name = config.container_name
    async with DockerClient() as docker:
        cid = await docker.create_container(
            name, {"Image": docker_env.image, "Labels": {"someone": "else"}}
        )
        try:
            await docker.start_container(cid)
            with pytest.raises(ContainerExistsError) as caught:
                await AsyncNIMDeployer(config, quiet=True).deploy()
            message = str(caught.value)
            assert "was not started by nim_async" in message  # HEAD: a 30 s wait, then a timeout
            assert "use_existing_container" not in message
            info = await docker.inspect_container(name)
            assert info is not None
            assert info["State"]["Running"]  # left alone
        finally:
            await docker.remove_container(cid, force=True)
