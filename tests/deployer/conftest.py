"""Docker fixtures: the real engine and the authenticated local registry of scripts/test-env.sh.

General enough for other test directories that deploy (e.g. custom weights):

* ``docker_env`` (session): the registry/image facts of the root conftest's
  ``docker_test_exports``, or a skip with a reason;
* ``docker_client``: a connected :class:`nim_async.deploy.docker.DockerClient`;
* ``unique_name()`` / ``free_port()``: a fresh container name / an unused loopback port;
* ``free_ports(n)``: the first of ``n`` consecutive unused loopback ports (``NIMConfig.port`` of
  ``replicas=n``);
* ``nim_config(**overrides)``: a :class:`NIMConfig` for the test registry with a unique name and
  port, no GPU request, a small shm and a temporary cache; every container it names is
  force-removed when the test ends, with every replica of its deployment (``replicas=N``:
  the containers labelled ``nim_async.deployment=<name>``);
* ``derived_image(*emulator_args)``: a local image running the emulator with extra CLI flags
  (``--exit-after 1``, ``--startup-seconds 600``), built FROM the pulled emulator image;
* ``remove_test_images()``: delete the local emulator image and derived images so a deploy
  really pulls.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.deploy.spec import DEPLOYMENT_LABEL
from nim_async.devtools.emulator_image import build_emulator_variant

DERIVED_LABEL = "nim_async.test.derived"
SESSION = uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class DockerTestEnv:
    """What scripts/test-env.sh set up."""

    registry: str  # 127.0.0.1:5599 (login server)
    registry_path: str  # 127.0.0.1:5599/nim/nvidia (NIMConfig.registry)
    ngc_key: str  # the fake nvapi- key the registry accepts
    image_name: str
    tag: str
    image: str  # full reference

    def __repr__(self) -> str:  # keep the (fake) key out of test output anyway
        return f"DockerTestEnv(image={self.image!r})"


@pytest.fixture(scope="session")
def docker_env(docker_test_exports: dict[str, str]) -> DockerTestEnv:
    """The local registry and emulator image, or skip with the reason."""
    values = docker_test_exports
    try:
        return DockerTestEnv(
            registry=values["NIM_TEST_REGISTRY"],
            registry_path=values["NIM_TEST_REGISTRY_PATH"],
            ngc_key=values["NIM_TEST_NGC_KEY"],
            image_name=values["NIM_TEST_IMAGE_NAME"],
            tag=values["NIM_TEST_IMAGE_TAG"],
            image=values["NIM_TEST_IMAGE"],
        )
    except KeyError as exc:
        pytest.skip(f"the test env file lacks {exc}; re-run `scripts/test-env.sh up`")


@pytest.fixture
async def docker_client(docker_env: DockerTestEnv) -> AsyncIterator[DockerClient]:
    """A connected Docker client (for inspecting what the deployer did)."""
    async with DockerClient(secrets=(docker_env.ngc_key,)) as client:
        yield client


@pytest.fixture
def unique_name() -> Callable[[], str]:
    """A factory of fresh container names (``nimtest-<session>-<random>``)."""

    def make() -> str:
        return f"nimtest-{SESSION}-{uuid.uuid4().hex[:8]}"

    return make


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A factory of currently unused loopback ports."""
    return _free_port


def _free_ports(n: int) -> int:
    from nim_async.deploy.ports import port_taken

    for _ in range(200):
        base = _free_port()
        if base + n - 1 <= 65535 and not any(port_taken("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError(f"found no {n} consecutive free ports")


@pytest.fixture
def free_ports() -> Callable[[int], int]:
    """``free_ports(n)``: the first of ``n`` consecutive currently unused loopback ports."""
    return _free_ports


@pytest.fixture
def container_names() -> list[str]:
    """Names of containers a test created (force-removed by ``nim_config``'s finalizer)."""
    return []


@pytest.fixture
async def nim_config(
    docker_env: DockerTestEnv,
    tmp_path: Path,
    unique_name: Callable[[], str],
    container_names: list[str],
) -> AsyncIterator[Callable[..., NIMConfig]]:
    """A factory of configs for the test registry; their containers are removed afterwards."""
    made: list[NIMConfig] = []

    def make(**overrides: Any) -> NIMConfig:
        values: dict[str, Any] = {
            "nvidia_api_key": docker_env.ngc_key,
            "registry": docker_env.registry_path,
            "image_name": docker_env.image_name,
            "tag": docker_env.tag,
            "served_model_name": unique_name(),
            "port": _free_port(),
            "gpus": None,
            "shm_size": "64MB",
            "local_cache_dir": str(tmp_path / "nim-cache"),
            "startup_timeout": 60.0,
            "stream_logs": False,
        }
        values.update(overrides)
        config = NIMConfig(**values)
        made.append(config)
        container_names.append(config.container_name)
        return config

    yield make
    async with DockerClient() as client:
        for name in dict.fromkeys(container_names):
            await client.remove_container(name, force=True)
            for item in await client.list_containers(labels={DEPLOYMENT_LABEL: name}):
                await client.remove_container(str(item["Id"]), force=True)


async def _ensure_base_image(client: DockerClient, env: DockerTestEnv) -> None:
    if await client.image_exists(env.image):
        return
    auth = RegistryAuth(env.registry, "$oauthtoken", _secret(env.ngc_key))
    async for _ in client.pull(env.image, auth):
        pass


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _derived_tag(args: tuple[str, ...]) -> str:
    import hashlib

    return "derived-" + hashlib.sha256(orjson.dumps(args)).hexdigest()[:10]


@pytest.fixture
def derived_image(
    docker_env: DockerTestEnv,
) -> Callable[..., Awaitable[str]]:
    """Build (once) an image running the emulator with extra flags; returns its tag.

    Use it as ``NIMConfig(tag=await derived_image("--exit-after", "1"))``: the image lives in
    the same repository locally, so the deployer finds it and does not pull.
    """

    async def build(*emulator_args: str) -> str:
        tag = _derived_tag((docker_env.tag, *emulator_args))
        ref = f"{docker_env.registry_path}/{docker_env.image_name}:{tag}"
        async with DockerClient(secrets=(docker_env.ngc_key,)) as client:
            if await client.image_exists(ref):
                return tag
            await _ensure_base_image(client, docker_env)
            await build_emulator_variant(
                client, docker_env.image, ref, emulator_args, labels={DERIVED_LABEL: "true"}
            )
        return tag

    return build


@pytest.fixture
def remove_test_images(docker_env: DockerTestEnv) -> Callable[[], Awaitable[None]]:
    """Delete the local emulator image and every image built on it (so the next deploy pulls)."""

    async def remove() -> None:
        async with DockerClient() as client:
            if not await client.image_exists(docker_env.image):
                return
            base = str((await client.image_info(docker_env.image))["Id"])
            images = await client.list_images(all=True)
            parent = {str(i["Id"]): str(i.get("ParentId") or "") for i in images}

            def depth_below_base(image_id: str) -> int:
                depth = 0
                while image_id and image_id != base:
                    image_id = parent.get(image_id, "")
                    depth += 1
                return depth if image_id == base else -1

            below = sorted(((depth_below_base(i), i) for i in parent if i != base), reverse=True)
            for depth, image_id in below:
                if depth > 0:
                    await client.remove_image(image_id, force=True)
            await client.remove_image(base, force=True)

    return remove


@pytest.fixture
def no_docker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point DOCKER_HOST at a socket nobody listens on."""
    host = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)
    return host
