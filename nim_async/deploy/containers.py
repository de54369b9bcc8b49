"""A deployment's containers on Docker: found, replaced, created and started as one set, stopped.

The decisions (which containers, reuse or replace, names and ports) are
:mod:`nim_async.deploy.replicas`'s; this module makes the Docker calls, one task per replica,
through :mod:`nim_async.deploy.docker`:

* :func:`find_members`: the deployment's containers, by their names and by their labels (what a
  deploy checks before it starts, and what ``stop`` removes).
* :class:`ReplicaSetLauncher`: removes an existing set, creates and starts every replica
  concurrently and waits until all are ready; the first failure cancels the rest and removes
  every container created (also when the deploy is cancelled). It also waits for a reused set.
* :func:`stop_members`: every replica at once (one grace period, not one per replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from nim_async.config import NIMConfig
from nim_async.deploy.concurrency import all_or_nothing
from nim_async.deploy.docker import DockerClient
from nim_async.deploy.events import DeployEvent, DeployState, Level, Notice, StateChanged
from nim_async.deploy.replicas import (
    Replica,
    container_name,
    is_running,
    labels_of,
    name_failed_replica,
    stop_scope,
)
from nim_async.deploy.spec import CONFIG_HASH_LABEL, CONTAINER_PORT, DEPLOYMENT_LABEL, MANAGED_LABEL
from nim_async.deploy.timings import DeployTimings
from nim_async.deploy.watch import LogFollower, list_models, wait_until_ready
from nim_async.errors import NIMError

__all__ = ["ReplicaSetLauncher", "find_members", "stop_members", "stop_targets"]

Emit = Callable[[DeployEvent], None]
Info = dict[str, Any]


async def find_members(
    docker: DockerClient, names: Sequence[str], deployment: str | None
) -> list[Info]:
    """The containers called ``names`` and every other one labelled as ``deployment``'s replica.

    Args:
        docker: The Docker client.
        names: Container names or ids, inspected concurrently.
        deployment: The deployment label to look for as well (``None``: none).

    Returns:
        Inspect documents: those of ``names`` that exist, in order, then the other labelled ones
        (each container once).
    """
    infos = await asyncio.gather(*(docker.inspect_container(n) for n in names))
    return await _with_labelled([info for info in infos if info is not None], docker, deployment)


async def _with_labelled(
    found: list[Info], docker: DockerClient, deployment: str | None
) -> list[Info]:
    """``found``, then every other container labelled as ``deployment``'s replica."""
    if not deployment:
        return found
    seen = {str(info["Id"]) for info in found}
    labelled = await docker.list_containers(
        labels={MANAGED_LABEL: "true", DEPLOYMENT_LABEL: deployment}
    )
    for item in labelled:
        if str(item.get("Id")) in seen:
            continue
        info = await docker.inspect_container(str(item["Id"]))
        if info is not None:
            found.append(info)
            seen.add(str(info["Id"]))
    return found


async def stop_targets(docker: DockerClient, name: str) -> list[Info]:
    """What ``stop(name)`` removes.

    The container of that name or id and, when it is a deployment's replica 0 (or no container
    has that name), every container labelled as that deployment's replica
    (:func:`~nim_async.deploy.replicas.stop_scope`).

    Args:
        docker: The Docker client.
        name: The container name or id, or a deployment's name.
    """
    info = await docker.inspect_container(name)
    known = [info] if info is not None else []
    return await _with_labelled(known, docker, stop_scope(info, name))


async def stop_members(
    docker: DockerClient, targets: Sequence[Info], *, grace: float, emit: Emit, fallback: str
) -> None:
    """Stop (SIGTERM, SIGKILL after ``grace``) and remove every container of ``targets`` at once.

    Args:
        docker: The Docker client.
        targets: Their inspect documents.
        grace: Seconds between SIGTERM and SIGKILL.
        emit: Receives a state change per container.
        fallback: The name to report for a container whose document has none.
    """

    async def stop_one(info: Info) -> None:
        container_id = str(info["Id"])
        name = container_name(info) or fallback
        if is_running(info):
            emit(StateChanged(DeployState.STOPPING, name, f"Stopping {name} (grace {grace:g} s)"))
            await docker.stop_container(container_id, grace=grace)
        await docker.remove_container(container_id, force=True)
        emit(StateChanged(DeployState.REMOVED, name, f"Removed {name}"))

    await asyncio.gather(*(stop_one(info) for info in targets))


class ReplicaSetLauncher:
    """One deploy's Docker work on its replica set.

    Args:
        docker: The Docker client (open for the deploy).
        config: The deployment configuration.
        emit: Receives state changes, notices and log lines.
        timings: Where the start, ready and exit marks go.
        logs: Streams each started container's logs (when ``config.stream_logs``).
        scrub: Removes secrets from log lines.
    """

    def __init__(
        self,
        docker: DockerClient,
        config: NIMConfig,
        *,
        emit: Emit,
        timings: DeployTimings,
        logs: LogFollower | None,
        scrub: Callable[[str], str],
    ) -> None:
        self._docker = docker
        self._config = config
        self._emit = emit
        self._timings = timings
        self._logs = logs
        self._scrub = scrub

    def _state(self, state: DeployState, name: str, message: str) -> None:
        self._emit(StateChanged(state, name, message))

    async def remove_existing(self, found: Sequence[Info]) -> None:
        """Remove the deployment's existing containers (``auto_kill_existing_container``).

        Args:
            found: Their inspect documents.
        """

        async def remove(info: Info) -> None:
            name = container_name(info)
            self._state(
                DeployState.REMOVING_EXISTING, name, f"Removing the existing container {name}"
            )
            await self._docker.remove_container(str(info["Id"]), force=True)

        await all_or_nothing([remove(info) for info in found])

    async def launch(
        self, replicas: Sequence[Replica], bodies: Sequence[dict[str, Any]]
    ) -> tuple[list[str], list[str] | None]:
        """Create and start every replica and wait until all are ready.

        Args:
            replicas: The replicas, in order.
            bodies: Their container-create bodies, in the same order.

        Returns:
            The container ids, in order, and the models replica 0 lists (``None`` if it could
            not say).

        Raises:
            NIMError: The first replica's failure, naming that replica; every container created
                is removed before it is raised (also on cancellation).
        """
        created: list[str] = []
        try:
            ids = await all_or_nothing(
                [
                    self._create(replica.name, body, created)
                    for replica, body in zip(replicas, bodies, strict=True)
                ]
            )
            try:
                await all_or_nothing(
                    [self._start(replica, cid) for replica, cid in zip(replicas, ids, strict=True)]
                )
                models = await list_models(replicas[0].url, self._emit)
            finally:
                if self._logs is not None:
                    await self._logs.stop()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await all_or_nothing([self._remove_quietly(c) for c in created])
            raise
        return ids, models

    async def wait_reused(
        self, replicas: Sequence[Replica], infos: Sequence[Mapping[str, Any]]
    ) -> None:
        """Wait until every replica of a running set is ready (they are left running on failure).

        Args:
            replicas: The set's replicas (as published).
            infos: Their inspect documents, in the same order.

        Raises:
            NIMError: The first replica's failure, naming that replica.
        """

        async def wait(replica: Replica, info: Mapping[str, Any]) -> None:
            self._state(
                DeployState.REUSING,
                replica.name,
                f"Reusing the running container {replica.name} at {replica.url}",
            )
            try:
                await self._wait_ready(str(info["Id"]), replica, created=False)
            except NIMError as exc:
                name_failed_replica(exc, replica, created=False)
                raise

        await all_or_nothing(
            [wait(replica, info) for replica, info in zip(replicas, infos, strict=True)]
        )

    async def _wait_ready(self, container_id: str, replica: Replica, *, created: bool) -> None:
        await wait_until_ready(
            self._docker,
            container_id,
            replica.name,
            replica.url,
            startup_timeout=self._config.startup_timeout,
            created=created,
            scrub=self._scrub,
            timings=self._timings,
        )

    async def _create(self, name: str, body: dict[str, Any], created: list[str]) -> str:
        try:
            container_id = await self._docker.create_container(name, body)
        except asyncio.CancelledError:
            # cancelled mid-request: the engine may have created it anyway
            await self._remove_if_ours(name)
            raise
        created.append(container_id)
        return container_id

    async def _start(self, replica: Replica, container_id: str) -> None:
        config = self._config
        self._state(
            DeployState.STARTING,
            replica.name,
            f"Starting {replica.name}{replica.which} ({config.image_ref}) on "
            f"{replica.host}:{replica.port} -> {CONTAINER_PORT}/tcp",
        )
        try:
            await self._docker.start_container(container_id, port=replica.port)
            self._timings.container_started = time.perf_counter()
            if config.stream_logs and self._logs is not None:
                self._logs.follow(self._docker, container_id, replica.name)
            await self._wait_ready(container_id, replica, created=True)
        except NIMError as exc:
            name_failed_replica(exc, replica)
            raise

    async def _remove_if_ours(self, name: str) -> None:
        """Remove the container ``name`` if this deploy's create made it (still ``created``)."""
        with anyio.move_on_after(30, shield=True), contextlib.suppress(NIMError):
            info = await self._docker.inspect_container(name)
            state = ((info or {}).get("State") or {}).get("Status")
            ours = labels_of(info or {}).get(CONFIG_HASH_LABEL) == self._config.config_hash()
            if ours and state == "created":
                await self._docker.remove_container(name, force=True)

    async def _remove_quietly(self, container_id: str) -> None:
        with anyio.move_on_after(30, shield=True):
            try:
                await self._docker.remove_container(container_id, force=True)
            except NIMError as exc:
                message = f"could not remove container {container_id}: {exc}"
                self._emit(Notice(message, Level.WARNING))
