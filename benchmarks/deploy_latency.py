"""How fast does the deployer notice that a container died, and that it became ready?

Needs the real Docker engine and local registry of ``scripts/test-env.sh up`` (root). The NIM
image is the emulator's (an emulator, not a model), started with extra flags:

* exit latency: ``--startup-seconds 60 --exit-after 1`` (dies while "loading"). Measured from
  the engine's ``die`` event (``docker events``, wall clock) to ``deploy()`` raising
  ``ContainerExitedError`` (goal <= 2 s). Peer in the same run: the engine's own ``docker wait``
  on an identical container, i.e. the least any client can do.
* ready latency: ``--startup-seconds 2``. Measured from the first 200 of ``/v1/health/ready``
  seen by an independent 5 ms poller to ``deploy()`` returning (goal <= 1 s).

    .venv/bin/python benchmarks/deploy_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.devtools.emulator_image import build_emulator_variant
from nim_async.errors import ContainerExitedError

ENV_FILE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "env"
EXIT_GOAL = 2.0
READY_GOAL = 1.0


def load_env() -> dict[str, str]:
    if not ENV_FILE.exists():
        sys.exit(f"{ENV_FILE} missing: run `scripts/test-env.sh up` first (as root)")
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, raw = line[7:].partition("=")
            if not raw.startswith("${"):
                values[key] = shlex.split(raw)[0]
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def derived(env: dict[str, str], *args: str) -> str:
    """Build (once) the emulator image with extra CLI flags; returns its tag."""
    tag = (
        "bench-" + uuid.uuid5(uuid.NAMESPACE_URL, repr((env["NIM_TEST_IMAGE_TAG"], args))).hex[:10]
    )
    ref = f"{env['NIM_TEST_REGISTRY_PATH']}/{env['NIM_TEST_IMAGE_NAME']}:{tag}"
    async with DockerClient() as docker:
        if await docker.image_exists(ref):
            return tag
        if not await docker.image_exists(env["NIM_TEST_IMAGE"]):
            from pydantic import SecretStr

            auth = RegistryAuth(
                env["NIM_TEST_REGISTRY"], "$oauthtoken", SecretStr(env["NIM_TEST_NGC_KEY"])
            )
            async for _ in docker.pull(env["NIM_TEST_IMAGE"], auth):
                pass
        await build_emulator_variant(
            docker, env["NIM_TEST_IMAGE"], ref, args, labels={"nim_async.test.derived": "true"}
        )
    return tag


def config(env: dict[str, str], tag: str, cache: str) -> NIMConfig:
    return NIMConfig(
        nvidia_api_key=env["NIM_TEST_NGC_KEY"],
        registry=env["NIM_TEST_REGISTRY_PATH"],
        image_name=env["NIM_TEST_IMAGE_NAME"],
        tag=tag,
        served_model_name=f"bench-{uuid.uuid4().hex[:8]}",
        port=free_port(),
        gpus=None,
        shm_size="64MB",
        local_cache_dir=cache,
        startup_timeout=120,
        stream_logs=False,
    )


def die_watcher(name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "docker",
            "events",
            "--filter",
            f"container={name}",
            "--filter",
            "event=die",
            "--format",
            "{{.TimeNano}}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def die_time(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.terminate()
    proc.wait()
    return int(line.strip()) / 1e9


async def exit_run(env: dict[str, str], tag: str, cache: str) -> float:
    cfg = config(env, tag, cache)
    watcher = die_watcher(cfg.container_name)
    await asyncio.sleep(0.2)  # let `docker events` subscribe
    try:
        await AsyncNIMDeployer(cfg, quiet=True).deploy()
    except ContainerExitedError:
        raised = time.time()
    else:
        raise SystemExit("the container did not exit")
    return raised - await asyncio.to_thread(die_time, watcher)


async def engine_wait_run(env: dict[str, str], tag: str) -> float:
    """Peer: create + start the same image by hand and time `wait` after the die event."""
    name = f"bench-peer-{uuid.uuid4().hex[:8]}"
    watcher = die_watcher(name)
    await asyncio.sleep(0.2)
    async with DockerClient() as docker:
        ref = f"{env['NIM_TEST_REGISTRY_PATH']}/{env['NIM_TEST_IMAGE_NAME']}:{tag}"
        cid = await docker.create_container(
            name, {"Image": ref, "Labels": {"nim_async.managed": "true"}}
        )
        try:
            await docker.start_container(cid)
            await docker.wait_container(cid)
            returned = time.time()
        finally:
            await docker.remove_container(cid, force=True)
    return returned - await asyncio.to_thread(die_time, watcher)


async def ready_run(env: dict[str, str], tag: str, cache: str) -> float:
    cfg = config(env, tag, cache)
    seen: list[float] = []

    async def poll() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
            while True:
                try:
                    response = await client.get(f"{cfg.base_url}/v1/health/ready")
                    if response.status_code == 200:
                        seen.append(time.perf_counter())
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    try:
        await AsyncNIMDeployer(cfg, quiet=True).deploy()
        returned = time.perf_counter()
        await asyncio.wait_for(poller, 5)
    finally:
        poller.cancel()
        await AsyncNIMDeployer.stop(cfg.container_name, quiet=True, grace=2)
    return returned - seen[0]


def row(label: str, values: list[float], goal: float | None) -> str:
    med, worst = statistics.median(values), max(values)
    verdict = "" if goal is None else ("  PASS" if worst <= goal else "  FAIL")
    goal_text = "" if goal is None else f"  goal <= {goal:.1f} s"
    return f"{label:<34} median {med:6.3f} s   max {worst:6.3f} s{goal_text}{verdict}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = load_env()
    exit_tag = await derived(env, "--startup-seconds", "60", "--exit-after", "1")
    ready_tag = await derived(env, "--startup-seconds", "2")
    with tempfile.TemporaryDirectory() as cache:
        exits = [await exit_run(env, exit_tag, cache) for _ in range(args.runs)]
        peers = [await engine_wait_run(env, exit_tag) for _ in range(args.runs)]
        readies = [await ready_run(env, ready_tag, cache) for _ in range(args.runs)]
    print(f"deploy latency, {args.runs} runs each (emulator image, an emulator not a model)")
    print(row("container exit -> error raised", exits, EXIT_GOAL))
    print(row("  peer: exit -> engine wait returns", peers, None))
    print(row("ready -> deploy() returns", readies, READY_GOAL))
    ok = max(exits) <= EXIT_GOAL and max(readies) <= READY_GOAL
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
