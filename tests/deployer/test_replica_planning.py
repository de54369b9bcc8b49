"""The replica set's planning and decisions (nim_async.deploy.replicas), without Docker, and the
all-or-nothing helper a deploy runs its per-replica steps with (nim_async.deploy.concurrency)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from nim_async.config import NIMConfig
from nim_async.deploy import replicas as replicas_module
from nim_async.deploy.concurrency import all_or_nothing, cancel_and_wait
from nim_async.deploy.replicas import (
    ExistingSetAction,
    existing_set_action,
    exists_error,
    in_replica_order,
    name_failed_replica,
    plan_replicas,
    reuse_notice,
    reused_replicas,
    set_runs,
    stop_scope,
)
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    CONTAINER_PORT,
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    REPLICA_LABEL,
)
from nim_async.errors import ContainerExitedError, ServiceNotReadyError

KEY = "nvapi-replica-planning-0123456789"


def _config(**overrides: Any) -> NIMConfig:
    values: dict[str, Any] = {"nvidia_api_key": KEY, "served_model_name": "nim", "port": 9100}
    return NIMConfig(**{**values, **overrides})


def _info(
    name: str,
    *,
    running: bool = True,
    ours: bool = True,
    replica: int = 0,
    config_hash: str | None = None,
    published: tuple[str, str] | None = None,
) -> dict[str, Any]:
    labels = {MANAGED_LABEL: "true", DEPLOYMENT_LABEL: "nim", REPLICA_LABEL: str(replica)}
    if config_hash is not None:
        labels[CONFIG_HASH_LABEL] = config_hash
    info: dict[str, Any] = {
        "Id": f"id-{name}",
        "Name": f"/{name}",
        "State": {"Running": running, "Status": "running" if running else "exited"},
        "Config": {"Labels": labels if ours else {}},
    }
    if published is not None:
        host, port = published
        info["HostConfig"] = {
            "PortBindings": {f"{CONTAINER_PORT}/tcp": [{"HostIp": host, "HostPort": port}]}
        }
    return info


def test_plan_names_ports_and_urls() -> None:
    plan = plan_replicas(_config(replicas=3))
    assert [r.name for r in plan] == ["nim", "nim-r1", "nim-r2"]
    assert [r.port for r in plan] == [9100, 9101, 9102]
    assert [r.url for r in plan] == [f"http://127.0.0.1:{p}" for p in (9100, 9101, 9102)]
    assert [r.which for r in plan] == [
        " (replica 0 of 3)",
        " (replica 1 of 3)",
        " (replica 2 of 3)",
    ]
    single = plan_replicas(_config())
    assert [(r.name, r.port, r.which) for r in single] == [("nim", 9100, "")]
    assert single[0].url == _config().base_url


def test_a_set_is_reused_only_whole_running_and_ours() -> None:
    names = ["nim", "nim-r1"]
    whole = [_info("nim"), _info("nim-r1", replica=1)]
    assert set_runs(whole, names)
    assert not set_runs(whole[:1], names)  # one missing
    assert not set_runs([*whole, _info("nim-r2", replica=2)], names)  # one extra
    assert not set_runs([whole[0], _info("nim-r1", running=False)], names)
    assert not set_runs([whole[0], _info("nim-r1", ours=False)], names)
    assert not set_runs([whole[0], _info("other")], names)

    assert existing_set_action(_config(replicas=2), whole, names) is ExistingSetAction.REUSE
    no_reuse = _config(replicas=2, use_existing_container=False)
    assert existing_set_action(no_reuse, whole, names) is ExistingSetAction.REFUSE
    kill = _config(replicas=2, use_existing_container=False, auto_kill_existing_container=True)
    assert existing_set_action(kill, whole, names) is ExistingSetAction.REPLACE
    partial = _config(replicas=2, auto_kill_existing_container=True)
    assert existing_set_action(partial, whole[:1], names) is ExistingSetAction.REPLACE
    assert existing_set_action(_config(replicas=2), whole[:1], names) is ExistingSetAction.REFUSE


def test_exists_error_says_what_would_change_things() -> None:
    one = exists_error(_config(use_existing_container=False), [_info("nim")], ["nim"])
    assert one.container_name == "nim"
    assert "A container named 'nim' is running" in str(one)
    assert "set use_existing_container=True to reuse it" in str(one)

    names = ["nim", "nim-r1"]
    partial = exists_error(
        _config(replicas=2), [_info("nim"), _info("nim-r1", running=False)], names
    )
    text = str(partial)
    assert "Deployment 'nim' (replicas=2: nim, nim-r1) has existing containers" in text
    assert "nim (running), nim-r1 (exited)" in text
    assert "a set is reused only when every replica runs and no other does" in text
    assert "use_existing_container=True" not in text  # reuse would not help
    assert "auto_kill_existing_container=True to replace them" in text

    off = _config(replicas=2, use_existing_container=False)
    whole = exists_error(off, [_info("nim"), _info("nim-r1", replica=1)], names)
    assert "set use_existing_container=True to reuse them" in str(whole)
    assert "a set is reused only" not in str(whole)
    stranger = exists_error(_config(replicas=2), [_info("nim", ours=False)], names)
    assert "not started by nim_async (no nim_async.managed label)" in str(stranger)


def test_reused_replicas_read_what_is_published() -> None:
    config = _config(replicas=2)
    infos = in_replica_order(
        [_info("nim-r1", replica=1), _info("nim", published=("0.0.0.0", "9200"))],
        plan_replicas(config),
    )
    assert [i["Name"] for i in infos] == ["/nim", "/nim-r1"]
    reused = reused_replicas(config, infos)
    assert [(r.host, r.port, r.url) for r in reused] == [
        ("0.0.0.0", 9200, "http://127.0.0.1:9200"),
        ("127.0.0.1", 9101, "http://127.0.0.1:9101"),  # not published: the plan's port
    ]
    with pytest.raises(KeyError):
        in_replica_order([_info("nim")], plan_replicas(config))


def test_reuse_notice_only_for_other_settings() -> None:
    config = _config(replicas=2)
    plan = plan_replicas(config)
    same = [_info("nim", config_hash=config.config_hash()), _info("nim-r1")]
    assert reuse_notice(config, plan, same) is None  # no hash label counts as the same
    other = [_info("nim", config_hash="x"), _info("nim-r1", config_hash="y")]
    assert (notice := reuse_notice(config, plan, other)) is not None
    assert notice.startswith("the running containers nim, nim-r1 were started with different")
    one = _config()
    single = reuse_notice(one, plan_replicas(one), [_info("nim", config_hash="x")])
    assert single is not None
    assert single.startswith("the running container nim was")


def test_stop_scope() -> None:
    assert stop_scope(None, "gone") == "gone"  # its replicas may remain
    assert stop_scope(_info("nim"), "nim") == "nim"
    assert stop_scope(_info("nim-r1", replica=1), "nim-r1") is None  # only that one
    assert stop_scope(_info("nim", ours=False), "nim") is None


def test_a_failure_names_its_replica() -> None:
    second = plan_replicas(_config(replicas=3))[1]
    exc = ServiceNotReadyError("nim-r1", 5.0, "not ready")
    name_failed_replica(exc, second)
    assert str(exc).startswith(
        "Replica 1 of 3 ('nim-r1', host port 9101) failed, so the deploy removes all 3 "
        "containers it created: "
    )
    reused = ServiceNotReadyError("nim-r1", 5.0, "not ready")
    name_failed_replica(reused, second, created=False)
    assert "(the running replicas were left as they are)" in str(reused)
    alone = ContainerExitedError("nim", 1)
    before = str(alone)
    name_failed_replica(alone, plan_replicas(_config())[0])
    assert str(alone) == before


def test_the_plan_is_io_free() -> None:
    tree = ast.parse(Path(replicas_module.__file__).read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported <= {"__future__", "enum", "collections", "dataclasses", "typing", "nim_async"}


async def test_all_or_nothing_returns_in_order_and_none_for_no_steps() -> None:
    async def value(v: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return v

    assert await all_or_nothing([value(1, 0.02), value(2, 0.0)]) == [1, 2]
    assert await all_or_nothing([]) == []  # a failed create that created nothing cleans up none


async def test_the_first_failure_cancels_the_rest() -> None:
    cancelled: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    async def fail(message: str, delay: float) -> None:
        await asyncio.sleep(delay)
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match="first"):
        await all_or_nothing([slow(), fail("first", 0.0), fail("later", 0.5)])
    assert cancelled == ["slow"]


async def test_cancel_and_wait_waits_for_every_task() -> None:
    finished: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)
            finished.append("done")

    tasks = [asyncio.create_task(cleans_up()) for _ in range(2)]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks)
    assert finished == ["done", "done"]
    assert all(t.cancelled() for t in tasks)
