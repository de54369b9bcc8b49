"""Blocking deploy scripts end cleanly on the Docker paths (real dockerd + the local registry).

Each script runs in a fresh interpreter; the registry key reaches it through the environment
(never in the script text). Containers a test names are force-removed afterwards.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from nim_async.deploy.docker import DockerClient
from nim_async.devtools.emulator_image import build_emulator_variant

from .conftest import DockerTestEnv, Ended, assert_clean, run_script

pytestmark = pytest.mark.docker

SCRIPT_HEAD = """
import os, sys
from nim_async import NIMConfig, NIMDeployer, NIMDeploymentError, NIMPredictor
E = os.environ
config = NIMConfig(
    nvidia_api_key=E["T_KEY"],
    registry=E["T_REGISTRY"],
    image_name=E["T_IMAGE_NAME"],
    tag=E["T_TAG"],
    served_model_name=E["T_NAME"],
    port=int(E["T_PORT"]),
    gpus=None,
    shm_size="64MB",
    local_cache_dir=E["T_CACHE"],
    startup_timeout=60.0,
    stream_logs=False,
    force_pull=E.get("T_FORCE_PULL") == "1",
)
"""

FAILING_DEPLOY = (
    SCRIPT_HEAD
    + """
deployer = NIMDeployer(config, quiet=True)
try:
    deployer.deploy()
except NIMDeploymentError as e:
    print("failed:", type(e).__name__)
print("end of script")
"""
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def deploy_env(
    docker_test_env: DockerTestEnv, tmp_path: Path
) -> AsyncIterator[Callable[..., dict[str, str]]]:
    """A factory of the child's environment for one deploy; its containers are removed after."""
    names: list[str] = []

    def make(**changes: str) -> dict[str, str]:
        name = f"nimsync-{uuid.uuid4().hex[:10]}"
        names.append(name)
        env = {
            "T_KEY": docker_test_env.ngc_key,
            "T_REGISTRY": docker_test_env.registry_path,
            "T_IMAGE_NAME": docker_test_env.image_name,
            "T_TAG": docker_test_env.tag,
            "T_NAME": name,
            "T_PORT": str(_free_port()),
            "T_CACHE": str(tmp_path / "cache"),
        }
        env.update(changes)
        return env

    yield make
    async with DockerClient() as client:  # container name = served_model_name
        for name in names:
            await client.remove_container(name, force=True)


async def _exit_after_image(env: DockerTestEnv) -> str:
    return await _variant(env, ("--startup-seconds", "60", "--exit-after", "0.5"))


async def _variant(env: DockerTestEnv, args: tuple[str, ...]) -> str:
    """The emulator image run with ``args`` (built once; the deployer tests' tag scheme)."""
    tag = "derived-" + hashlib.sha256(orjson.dumps((env.tag, *args))).hexdigest()[:10]
    ref = f"{env.registry_path}/{env.image_name}:{tag}"
    async with DockerClient(secrets=(env.ngc_key,)) as client:
        if not await client.image_exists(ref):
            await build_emulator_variant(client, env.image, ref, args)
    return tag


def _failed(ended: Ended, error: str) -> None:
    assert ended.returncode == 0, ended.stderr
    assert_clean(ended)
    assert ended.stdout.splitlines() == [f"failed: {error}", "end of script"]


async def test_registry_refuses_the_key(
    deploy_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = deploy_env(T_KEY="nvapi-wrong-password-0000", T_FORCE_PULL="1")
    _failed(await run_script(FAILING_DEPLOY, tmp_path, env=env), "RegistryAuthError")


async def test_image_missing(deploy_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = deploy_env(T_TAG=f"no-such-tag-{uuid.uuid4().hex[:8]}")
    _failed(await run_script(FAILING_DEPLOY, tmp_path, env=env), "ImagePullError")


async def test_container_exits(
    docker_test_env: DockerTestEnv,
    deploy_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    env = deploy_env(T_TAG=await _exit_after_image(docker_test_env))
    _failed(await run_script(FAILING_DEPLOY, tmp_path, env=env), "ContainerExitedError")


async def test_successful_deploy_and_predict_never_closed(
    deploy_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = deploy_env()
    ended = await run_script(
        SCRIPT_HEAD
        + """
from PIL import Image
Image.new("RGB", (64, 64), (220, 20, 20)).save("image.png")
deployer = NIMDeployer(config, quiet=True)
result = deployer.deploy()
predictor = NIMPredictor(model_name=result.served_model_name, task_type="vqa", port=result.port)
print(predictor(source="image.png", user_prompt="What color is it?").result.answer)
print("".join(predictor(source="image.png", stream=True)) != "")
print(NIMDeployer.stop(result.container_name, quiet=True))
""",
        tmp_path,
        env=env,
        limit=120,
    )
    assert ended.returncode == 0, ended.stderr
    assert_clean(ended)
    assert ended.stdout.splitlines() == ["red", "True", "True"]


async def test_ctrl_c_during_deploy_removes_the_container(
    docker_test_env: DockerTestEnv,
    deploy_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    tag = await _never_ready_image(docker_test_env)
    env = deploy_env(T_TAG=tag)
    ended = await run_script(
        SCRIPT_HEAD
        + """
import threading
# the marker comes while deploy() waits for the never-ready server
threading.Timer(3.0, lambda: print("DEPLOYING", flush=True)).start()
try:
    NIMDeployer(config, quiet=True).deploy()
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
""",
        tmp_path,
        env=env,
        interrupt_on="DEPLOYING",
        limit=120,
    )
    assert ended.returncode == 130, ended.stderr
    assert_clean(ended)
    assert ended.stdout.splitlines()[-1] == "interrupted"
    async with DockerClient() as client:
        remaining = [
            c
            for c in await client.list_containers(all=True)
            if f"/{env['T_NAME']}" in (c.get("Names") or [])
        ]
    assert remaining == []


async def _never_ready_image(env: DockerTestEnv) -> str:
    return await _variant(env, ("--startup-seconds", "600"))
