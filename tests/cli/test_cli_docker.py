"""The CLI's Docker commands end to end: deploy the emulator image from the authenticated local
registry, list it, predict and batch against it, stop it (``scripts/test-env.sh up`` first)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def registry(docker_test_exports: dict[str, str]) -> dict[str, str]:
    """The test registry's facts (root conftest), once the ``docker`` command works too."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("the docker command does not answer (run `scripts/test-env.sh up`)")
    return docker_test_exports


async def test_deploy_ps_predict_batch_stop(
    cli: Any, registry: dict[str, str], image_dir: Path, tmp_path: Path, base_env: dict[str, str]
) -> None:
    key = registry["NIM_TEST_NGC_KEY"]
    env = dict(base_env, NGC_API_KEY=key)
    name = f"nimtest-cli-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    outputs: list[str] = []

    async def run(*args: str) -> Any:
        done = await cli(*args, env=env, limit_s=240)
        outputs.extend((done.out, done.err))
        return done

    try:
        deployed = await run(
            "deploy",
            "--registry",
            registry["NIM_TEST_REGISTRY_PATH"],
            "--tag",
            registry["NIM_TEST_IMAGE_TAG"],
            "--served-model-name",
            name,
            "--port",
            str(port),
            "--gpus",
            "none",
            "--shm-size",
            "64m",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--startup-timeout",
            "120",
            "--no-logs",
            "--quiet",
            "--json",
        )
        assert deployed.rc == 0, deployed.err
        result = orjson.loads(deployed.out)
        assert result["container_name"] == name
        assert result["base_url"] == f"http://127.0.0.1:{port}"

        listed = await run("ps", "--json")
        assert listed.rc == 0, listed.err
        mine = [c for c in orjson.loads(listed.out) if c["name"] == name]
        assert len(mine) == 1
        assert mine[0]["state"] == "running"
        table = await run("ps")
        assert name in table.out

        predicted = await run(
            "predict",
            str(image_dir / "img002.png"),
            "--port",
            str(port),
            "--model",
            name,
            "--task",
            "vqa",
            "--prompt",
            "How many shapes are there?",
            "--json",
        )
        assert predicted.rc == 0, predicted.err
        assert orjson.loads(predicted.out)["result"] == "3"

        batch = await run(
            "batch",
            "images",
            "--port",
            str(port),
            "--model",
            name,
            "--task",
            "vqa",
            "--prompt",
            "How many shapes are there?",
            "--out",
            "r.jsonl",
        )
        assert batch.rc == 0, batch.err
        assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == 20

        stopped = await run("stop", name)
        assert stopped.rc == 0, stopped.err
        after = await run("ps", "--json")
        assert name not in [c["name"] for c in orjson.loads(after.out)]
        again = await run("stop", name)
        assert again.rc == 1
    finally:
        await asyncio.to_thread(_docker, "rm", "-f", name)
    assert all(key not in text for text in outputs), "the NGC key leaked into CLI output"


async def test_emulator_image_builds(cli: Any, registry: dict[str, str]) -> None:
    tag = f"nim-async-cli-test:{uuid.uuid4().hex[:8]}"
    try:
        done = await cli("emulator-image", "--tag", tag, "--quiet", limit_s=240)
        assert done.rc == 0, done.err
        image_id = done.out.strip()
        assert image_id.startswith("sha256:")
        inspect = await asyncio.to_thread(_docker, "image", "inspect", "--format", "{{.Id}}", tag)
        assert inspect.stdout.strip() == image_id
    finally:
        await asyncio.to_thread(_docker, "rmi", tag)


def _free_ports(n: int) -> int:
    from nim_async.deploy.ports import port_taken

    for _ in range(200):
        base = _free_port()
        if base + n <= 65536 and not any(port_taken("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


async def _on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """Run the CLI with stdout on a pseudo-terminal (as a person at a shell sees it)."""
    import pty

    from tests.cli.conftest import COMMAND

    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *COMMAND, *args, stdout=slave, stderr=asyncio.subprocess.PIPE, env=env
        )
        os.close(slave)
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    return
                if not data:
                    return
                chunks.append(data)

        reader = asyncio.create_task(asyncio.to_thread(drain))
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        await asyncio.wait_for(reader, 10)
        assert proc.returncode == 0, err.decode()
    finally:
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # colours and styles off


async def test_deploy_replicas_ps_groups_them_stop_removes_all(
    cli: Any, registry: dict[str, str], tmp_path: Path, base_env: dict[str, str]
) -> None:
    key = registry["NIM_TEST_NGC_KEY"]
    env = dict(base_env, NGC_API_KEY=key)
    name = f"nimtest-cli-{uuid.uuid4().hex[:8]}"
    port = _free_ports(2)
    names = [name, f"{name}-r1"]
    try:
        deployed = await cli(
            "deploy",
            "--registry",
            registry["NIM_TEST_REGISTRY_PATH"],
            "--tag",
            registry["NIM_TEST_IMAGE_TAG"],
            "--served-model-name",
            name,
            "--port",
            str(port),
            "--replicas",
            "2",
            "--gpus",
            "none",
            "--shm-size",
            "64m",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-logs",
            "--quiet",
            "--json",
            env=env,
            limit_s=240,
        )
        assert deployed.rc == 0, deployed.err
        result = orjson.loads(deployed.out)
        assert result["container_name"] == name
        assert result["endpoints"] == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]

        listed = await cli("ps", "--json", env=env)
        mine = [c for c in orjson.loads(listed.out) if c["deployment"] == name]
        assert [(c["name"], c["replica"], c["port"]) for c in mine] == [
            (name, 0, port),
            (f"{name}-r1", 1, port + 1),
        ]
        piped = await cli("ps", env=env)
        header, *lines = piped.out.splitlines()
        columns = header.split("\t")
        assert {"deployment", "replica"} <= set(columns)
        rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]
        assert [(r["name"], r["replica"]) for r in rows if r["deployment"] == name] == [
            (name, "0"),
            (f"{name}-r1", "1"),
        ]
        table = await _on_a_terminal("ps", env=env)
        assert f"{name} (2 replicas)" in table
        assert "2/2 running" in table
        assert f"{port}-{port + 1}" in table
        assert f"├ {name}" in table
        assert f"└ {name}-r1" in table

        stopped = await cli("stop", name, env=env)
        assert stopped.rc == 0, stopped.err
        after = await cli("ps", "--json", env=env)
        assert [c for c in orjson.loads(after.out) if c["deployment"] == name] == []
    finally:
        for container in names:
            await asyncio.to_thread(_docker, "rm", "-f", container)
