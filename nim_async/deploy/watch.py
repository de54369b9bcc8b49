"""Watching a starting NIM container: ready, exited or out of time, and its logs meanwhile.

:func:`wait_until_ready` polls ``/v1/health/ready``
(:class:`~nim_async.http.health.ReadinessProbe`) while it watches the container, and turns an
exit into :class:`~nim_async.errors.ContainerExitedError` and a timeout into
:class:`~nim_async.errors.ServiceNotReadyError`, each with the last log lines.
:class:`LogFollower` streams each container's log lines as
:class:`~nim_async.deploy.events.LogLine` events; :func:`list_models` asks a ready server what
it serves. Every log line is scrubbed of the NGC key before anyone sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nim_async.deploy.concurrency import cancel_and_wait
from nim_async.deploy.docker import DockerClient
from nim_async.deploy.events import DeployEvent, Level, LogLine, Notice
from nim_async.deploy.timings import DeployTimings
from nim_async.errors import ContainerExitedError, NIMError, ServiceNotReadyError
from nim_async.http.health import ReadinessProbe
from nim_async.http.retry import RetryPolicy

__all__ = ["LOG_TAIL", "LogFollower", "list_models", "tail_logs", "wait_until_ready"]

LOG_TAIL = 50
"""How many of a failed container's last log lines its error shows."""

Scrub = Callable[[str], str]
Emit = Callable[[DeployEvent], None]


async def tail_logs(docker: DockerClient, container_id: str, scrub: Scrub) -> list[str]:
    """The container's last :data:`LOG_TAIL` log lines, scrubbed (none if they cannot be read).

    Args:
        docker: The Docker client.
        container_id: The container.
        scrub: Removes secrets from a line.
    """
    try:
        lines = await docker.container_logs(container_id, tail=LOG_TAIL)
    except NIMError:
        return []
    return [scrub(line) for line in lines]


async def wait_until_ready(
    docker: DockerClient,
    container_id: str,
    name: str,
    base_url: str,
    *,
    startup_timeout: float,
    created: bool,
    scrub: Scrub,
    timings: DeployTimings,
) -> None:
    """Wait until the container serves at ``base_url``, or raise why it does not.

    Marks ``timings.ready`` (readiness observed) or ``timings.exited`` (exit observed).

    Args:
        docker: The Docker client.
        container_id: The container.
        name: Its name (for messages).
        base_url: The URL it serves at from this host.
        startup_timeout: Seconds to wait (``NIMConfig.startup_timeout``).
        created: Whether this deploy created it (it will be removed) or reuses it (left running).
        scrub: Removes secrets from log lines.
        timings: Where the marks go.

    Raises:
        ContainerExitedError: If the container exits first (exit code, OOM kill, last log lines).
        ServiceNotReadyError: If it is not ready within ``startup_timeout`` (with the last log
            lines).
        DockerUnavailableError: If the Docker daemon cannot be reached while watching.
        APIError: If the watch of the container fails otherwise.
    """
    timeout = startup_timeout
    async with ReadinessProbe(base_url) as probe:
        ready = asyncio.create_task(probe.wait())
        exited = asyncio.create_task(docker.wait_container(container_id))
        try:
            done, _ = await asyncio.wait(
                {ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_and_wait((ready, exited))
        if ready in done and not ready.cancelled() and ready.exception() is None:
            timings.ready = probe.ready_at
            return
        if exited in done:
            timings.exited = time.perf_counter()
            exit_code = exited.result()  # re-raises a Docker error from the watch
            info = await docker.inspect_container(container_id) or {}
            state = info.get("State") or {}
            logs = await tail_logs(docker, container_id, scrub)
            raise ContainerExitedError(
                name,
                int(state.get("ExitCode", exit_code)),
                oom_killed=bool(state.get("OOMKilled")),
                logs="\n".join(logs),
            )
        logs = await tail_logs(docker, container_id, scrub)
        message = (
            f"NIM container {name!r} was not ready after {timeout:g} seconds "
            f"(/v1/health/ready at {base_url}); "
            f"{'it was removed' if created else 'the existing container was left running'}. "
            "Raise "
            "NIMConfig.startup_timeout if the model needs longer to load."
        )
        if logs:
            message += "\nLast log lines:\n" + "\n".join(logs)
        raise ServiceNotReadyError(name, timeout, message)


#: Three tries of the model list, under the one retry policy (short: the server is ready).
_MODELS_RETRY = RetryPolicy(attempts=3, base=0.1, cap=0.2)


async def list_models(base_url: str, emit: Emit) -> list[str] | None:
    """The models a ready server lists (three tries; ``None`` and a warning if all fail).

    Retried as :mod:`nim_async.http.retry` says (no answer, 429, 502, 503, 504).

    Args:
        base_url: The server's URL.
        emit: Receives the warning.
    """
    async with ReadinessProbe(base_url) as probe:
        retry = _MODELS_RETRY.start(label="GET /v1/models")
        while True:
            try:
                return await probe.models()
            except NIMError as exc:
                # probe.models wraps the HTTP failure (its cause) in an APIError.
                cause = exc.__cause__ if isinstance(exc.__cause__, NIMError) else exc
                if not await retry.backoff(cause):
                    emit(Notice(f"could not list the models: {exc}", Level.WARNING))
                    return None


class LogFollower:
    """Streams containers' log lines as events, one task per container, until stopped.

    Args:
        emit: Receives a :class:`~nim_async.deploy.events.LogLine` per line.
        scrub: Removes secrets from a line.
    """

    def __init__(self, emit: Emit, scrub: Scrub) -> None:
        self._emit = emit
        self._scrub = scrub
        self._tasks: list[asyncio.Task[None]] = []

    def follow(self, docker: DockerClient, container_id: str, name: str) -> None:
        """Start streaming the logs of ``container_id`` (a Docker error ends it quietly).

        Args:
            docker: The Docker client.
            container_id: The container.
            name: Its name (the events' container).
        """
        self._tasks.append(asyncio.create_task(self._stream(docker, container_id, name)))

    async def stop(self) -> None:
        """Stop every stream and wait until each has ended."""
        tasks, self._tasks = self._tasks, []
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await cancel_and_wait(tasks)

    async def _stream(self, docker: DockerClient, container_id: str, name: str) -> None:
        lines = docker.follow_logs(container_id)
        with contextlib.suppress(NIMError):
            async with contextlib.aclosing(lines):
                async for line in lines:
                    self._emit(LogLine(name, self._scrub(line)))
