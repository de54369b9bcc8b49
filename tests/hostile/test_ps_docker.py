"""``nim-async ps`` piped into a file keeps every value whole (real dockerd)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from nim_async.deploy.docker import DockerClient
from nim_async.deploy.spec import MANAGED_LABEL

from .conftest import DockerEnv, cli_env, run_cli

pytestmark = pytest.mark.docker


async def test_ps_piped_prints_full_tab_separated_values(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    name = f"nimps-a-rather-long-container-name-for-a-narrow-pipe-{uuid.uuid4().hex}"
    async with DockerClient() as docker:
        cid = await docker.create_container(
            name, {"Image": docker_env.image, "Labels": {MANAGED_LABEL: "true"}}
        )
        try:
            env = cli_env()
            env.pop("COLUMNS", None)  # a pipe: rich would assume 80 columns
            done = await run_cli("ps", cwd=tmp_path, env=env)
            as_json = await run_cli("ps", "--json", cwd=tmp_path, env=env)
        finally:
            await docker.remove_container(cid, force=True)
    assert done.rc == 0, done.err
    header, *rows = done.out.splitlines()
    columns = header.split("\t")
    assert "name" in columns
    assert "container_id" in columns
    mine = [dict(zip(columns, row.split("\t"), strict=True)) for row in rows if name in row]
    assert len(mine) == 1, done.out  # HEAD: a boxed table, every cell cut with "…"
    assert mine[0]["name"] == name
    assert mine[0]["container_id"] == cid
    assert mine[0]["image"] == docker_env.image
    listed = [c for c in orjson.loads(as_json.out) if c["name"] == name]
    assert listed[0]["container_id"] == cid  # --json unchanged
