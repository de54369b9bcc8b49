"""SIGTERM / SIGHUP during a deploy cancel it like Ctrl-C: the container it created is removed.

Real dockerd and the local registry (``scripts/test-env.sh up``); the emulator image variant
that never gets ready (``--startup-seconds 600``), so the signal comes while the deploy waits.
Each deploy runs in a fresh process: ``nim-async deploy`` and a script calling
``NIMDeployer.deploy()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from nim_async.deploy.docker import DockerClient
from nim_async.devtools.emulator_image import build_emulator_variant

from .conftest import COMMAND, DockerEnv, cli_env, free_port

SCRIPT = """
import os
from nim_async import NIMConfig, NIMDeployer
E = os.environ
config = NIMConfig(
    nvidia_api_key=E["NGC_API_KEY"], registry=E["T_REGISTRY"], image_name=E["T_IMAGE_NAME"],
    tag=E["T_TAG"], served_model_name=E["T_NAME"], port=int(E["T_PORT"]), gpus=None,
    shm_size="64MB", local_cache_dir=E["T_CACHE"], startup_timeout=300.0, stream_logs=False,
)
try:
    NIMDeployer(config, quiet=True).deploy()
finally:
    print("finally ran", flush=True)
"""


async def _never_ready_tag(env: DockerEnv) -> str:
    args = ("--startup-seconds", "600")  # the tag scheme of tests/sync/test_exit_docker.py
    tag = "derived-" + hashlib.sha256(orjson.dumps((env.tag, *args))).hexdigest()[:10]
    ref = f"{env.registry_path}/{env.image_name}:{tag}"
    async with DockerClient(secrets=(env.ngc_key,)) as client:
        if not await client.image_exists(ref):
            await build_emulator_variant(client, env.image, ref, args)
    return tag


async def _containers(name: str) -> list[dict[str, object]]:
    async with DockerClient() as client:
        return [
            c
            for c in await client.list_containers(all=True)
            if f"/{name}" in (c.get("Names") or [])
        ]


@pytest.fixture
async def deploy_env(
    docker_env: DockerEnv, tmp_path: Path
) -> AsyncIterator[Callable[[], dict[str, str]]]:
    """A factory of the child's environment for one never-ready deploy; cleans up after."""
    tag = await _never_ready_tag(docker_env)
    names: list[str] = []

    def make() -> dict[str, str]:
        name = f"nimsig-{uuid.uuid4().hex[:10]}"
        names.append(name)
        return cli_env(
            NGC_API_KEY=docker_env.ngc_key,
            T_REGISTRY=docker_env.registry_path,
            T_IMAGE_NAME=docker_env.image_name,
            T_TAG=tag,
            T_NAME=name,
            T_PORT=str(free_port()),
            T_CACHE=str(tmp_path / "cache"),
        )

    yield make
    async with DockerClient() as client:
        for name in names:
            await client.remove_container(name, force=True)


def _cli_args(env: dict[str, str]) -> list[str]:
    return [
        *COMMAND,
        "deploy",
        "--registry", env["T_REGISTRY"],
        "--image-name", env["T_IMAGE_NAME"],
        "--tag", env["T_TAG"],
        "--served-model-name", env["T_NAME"],
        "--port", env["T_PORT"],
        "--gpus", "none",
        "--shm-size", "64MB",
        "--cache-dir", env["T_CACHE"],
        "--startup-timeout", "300",
        "--no-logs",
        "--quiet",
    ]  # fmt: skip


async def _signal_while_waiting(
    argv: list[str], env: dict[str, str], sig: signal.Signals, cwd: Path
) -> tuple[int, str, str]:
    """Start ``argv``; once its container runs, send ``sig``; return (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(1200):
            found = await _containers(env["T_NAME"])
            if any(c.get("State") == "running" for c in found) or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the deploy never started its container")
        if proc.returncode is not None:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            pytest.fail(f"the deploy ended before the signal: {err}")
        await asyncio.sleep(1.0)  # well inside the readiness wait
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


pytestmark = pytest.mark.docker


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
async def test_cli_deploy_signal_removes_the_container(
    deploy_env: Callable[[], dict[str, str]], tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    env = deploy_env()
    rc, _, err = await _signal_while_waiting(_cli_args(env), env, sig, tmp_path)
    assert rc == status, err  # HEAD: -15 / -1, the container left running
    assert "Traceback" not in err
    assert f"{sig.name}: deploy cancelled" in err
    assert await _containers(env["T_NAME"]) == []


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
async def test_blocking_deploy_signal_removes_the_container(
    deploy_env: Callable[[], dict[str, str]], tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    env = deploy_env()
    script = tmp_path / "deploy_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    rc, out, err = await _signal_while_waiting([sys.executable, str(script)], env, sig, tmp_path)
    assert rc == status, err
    assert "Traceback" not in err
    assert "Unclosed" not in err
    assert out.splitlines() == ["finally ran"]  # SystemExit: the script's finally runs
    assert await _containers(env["T_NAME"]) == []


def test_handlers_only_while_deploying_and_never_over_the_users() -> None:
    from nim_async.sync.deployer import _cancel_on_signals

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with _cancel_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def mine(signum: int, frame: object) -> None:
        """The script's own handler."""

    previous = signal.signal(signal.SIGTERM, mine)
    ignored = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _cancel_on_signals():
            assert signal.getsignal(signal.SIGTERM) is mine
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, ignored)
