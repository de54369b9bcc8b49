"""AsyncNIMDeployer: deploy a NIM container and wait until it serves.

The flow of :meth:`AsyncNIMDeployer.deploy`::

    validate (cache dir) -> pull unless present or force_pull (login first: $oauthtoken / key)
    -> custom weights (nim_async.deploy.weights.prepare_weights)
    -> existing container (reuse / remove / ContainerExistsError) -> create + start
    -> stream logs (a task) -> wait ready while watching the container -> GET /v1/models
    -> NIMDeploymentResult

A deploy that fails or is cancelled after creating its container removes that container; the
image and the cache stay. All Docker calls go through :mod:`nim_async.deploy.docker`; all HTTP calls
through :mod:`nim_async.http.health`. Nothing connects to Docker before :meth:`deploy`, :meth:`stop`
or :meth:`list`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import time
from types import TracebackType
from typing import Any, Self

import anyio
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from nim_async.config import CONTAINER_CACHE_DIR, NIMConfig
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.errors import (
    ContainerExistsError,
    ContainerExitedError,
    NIMError,
    RegistryAuthError,
    ServiceNotReadyError,
)
from nim_async.http.health import ReadinessProbe
from nim_async.results import NIMDeploymentResult

__all__ = [
    "CONFIG_HASH_LABEL",
    "CONTAINER_PORT",
    "MANAGED_LABEL",
    "AsyncNIMDeployer",
    "ContainerStatus",
    "DeployTimings",
]

CONTAINER_PORT = 8000
MANAGED_LABEL = "nim_async.managed"
CONFIG_HASH_LABEL = "nim_async.config_hash"
_LABEL_PREFIX = "nim_async."
REGISTRY_USER = "$oauthtoken"
LOG_TAIL = 50


class ContainerStatus(BaseModel):
    """One container managed by ``nim_async`` (as listed by ``nim-async ps``).

    Attributes:
        name: Container name.
        container_id: Full container id.
        image: Image reference.
        state: Engine state (``running``, ``exited``, ...).
        status: Human-readable status (``Up 3 minutes``).
        host: Host address the NIM port is published on.
        port: Host port of the NIM.
        served_model_name: ``NIM_SERVED_MODEL_NAME`` it was started with, if any.
        config_hash: Hash of the settings it was started with.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    container_id: str
    image: str
    state: str
    status: str
    host: str | None = None
    port: int | None = None
    served_model_name: str | None = None
    config_hash: str | None = None


class DeployTimings(BaseModel):
    """``time.perf_counter()`` marks of the last :meth:`AsyncNIMDeployer.deploy` (for benchmarks).

    Attributes:
        started: When ``deploy()`` began.
        container_started: When the container was started.
        ready: When readiness was observed.
        exited: When the container's exit was observed.
        finished: When ``deploy()`` returned or raised.
    """

    started: float = 0.0
    container_started: float | None = None
    ready: float | None = None
    exited: float | None = None
    finished: float | None = None


def _device_requests(gpus: Any) -> list[dict[str, Any]] | None:
    if gpus is None:
        return None
    request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]]}
    if gpus == "all":
        request["Count"] = -1
    elif isinstance(gpus, int):
        request["Count"] = gpus
    else:
        request["DeviceIDs"] = [str(g) for g in gpus]
    return [request]


def _published(info: dict[str, Any]) -> tuple[str | None, int | None]:
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    entries = bindings.get(f"{CONTAINER_PORT}/tcp") or []
    if not entries:
        return None, None
    host = entries[0].get("HostIp") or "0.0.0.0"
    port = entries[0].get("HostPort")
    return host, int(port) if port else None


def _env_value(info: dict[str, Any], name: str) -> str | None:
    for item in (info.get("Config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return None


def _describe_state(state: dict[str, Any]) -> str:
    status = str(state.get("Status", "unknown"))
    if status == "running":
        return f"running since {state.get('StartedAt', '?')}"
    if status == "exited":
        oom = ", OOM-killed" if state.get("OOMKilled") else ""
        return f"exited ({state.get('ExitCode', '?')}{oom}) at {state.get('FinishedAt', '?')}"
    return status


class _PullDisplay:
    """Per-layer rich progress (bytes and speed) for one pull."""

    def __init__(self, console: Console, ref: str) -> None:
        self.console = console
        self.ref = ref
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[phase]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.phase: dict[str, str] = {}
        self.layer_bytes: dict[str, int] = {}
        self.started = time.perf_counter()

    def __enter__(self) -> Self:
        self.console.print(f"Pulling [bold]{self.ref}[/]")
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status", ""))
        layer = event.get("id")
        detail = event.get("progressDetail") or {}
        if not layer or status.startswith("Pulling from"):
            if status and not status.startswith("Pulling from"):
                self.console.print(status, markup=False, highlight=False)
            return
        layer = str(layer)
        task = self.tasks.get(layer)
        if task is None:
            task = self.progress.add_task(f"layer {layer}", total=None, phase=status)
            self.tasks[layer] = task
        total = detail.get("total")
        current = detail.get("current")
        if status in ("Downloading", "Extracting") and self.phase.get(layer) != status:
            self.phase[layer] = status
            self.progress.reset(task, total=total, phase=status)
        if status == "Downloading" and isinstance(total, int):
            self.layer_bytes[layer] = total
        if isinstance(current, int):
            self.progress.update(task, completed=current, total=total, phase=status)
        elif status in ("Pull complete", "Already exists", "Download complete"):
            t = self.progress.tasks[self.tasks[layer]]
            self.progress.update(task, completed=t.total or 0, phase=status)
        else:
            self.progress.update(task, phase=status)

    def summary(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        size = sum(self.layer_bytes.values())
        return (
            f"Pulled {self.ref}: {len(self.tasks)} layers, {size / 1e6:.1f} MB in "
            f"{elapsed:.1f} s ({size / 1e6 / elapsed:.1f} MB/s)"
        )


class AsyncNIMDeployer:
    """Deploys a NIM container (async core of :class:`nim_async.NIMDeployer`).

    Args:
        config: Deployment configuration; ``None`` builds one from the environment
            (``NGC_API_KEY`` required).
        quiet: Print nothing at all.
        console: Where progress and logs go (default: a rich console on stderr).

    Raises:
        InvalidConfigError: If ``config`` is ``None`` and the environment gives no valid key.
    """

    def __init__(
        self,
        config: NIMConfig | None = None,
        quiet: bool = False,
        *,
        console: Console | None = None,
    ) -> None:
        self._config = config if config is not None else NIMConfig()
        self._quiet = quiet
        self._console: Console | None = None if quiet else (console or Console(stderr=True))
        self._log_task: asyncio.Task[None] | None = None
        self.timings = DeployTimings()

    @property
    def config(self) -> NIMConfig:
        """The deployment configuration."""
        return self._config

    @property
    def quiet(self) -> bool:
        """Whether console output is suppressed."""
        return self._quiet

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_log_task()

    def __repr__(self) -> str:
        return f"AsyncNIMDeployer(image={self._config.image_ref!r}, quiet={self._quiet})"

    # ------------------------------------------------------------------ output

    def _say(self, message: str) -> None:
        if self._console is not None:
            self._console.print(message)

    # ------------------------------------------------------------------ deploy

    async def deploy(self) -> NIMDeploymentResult:
        """Deploy the NIM container and wait until it is ready.

        Returns:
            The deployment result (container id and name, port, served and available models).

        Raises:
            InvalidConfigError: If the cache directory cannot be used.
            RegistryAuthError: If the registry refuses the NGC key.
            ImagePullError: If the image cannot be pulled.
            ModelIncompatibilityError: If custom weights do not fit the image.
            ContainerExistsError: If a container of that name exists and may not be reused or
                removed.
            GPURuntimeError: If the host has no GPU container runtime.
            PortInUseError: If the host port is taken.
            ContainerExitedError: If the container exits or is OOM-killed while starting.
            ServiceNotReadyError: If it is not ready within ``config.startup_timeout``.
            DockerUnavailableError: If the Docker daemon cannot be reached.
            APIError: For other Docker failures.
        """
        self.timings = DeployTimings(started=time.perf_counter())
        try:
            return await self._deploy()
        finally:
            self.timings.finished = time.perf_counter()

    async def _deploy(self) -> NIMDeploymentResult:
        config = self._config
        cache_dir = config.ensure_cache_dir()
        key = config.nvidia_api_key.get_secret_value()
        async with DockerClient(secrets=(key,)) as docker:
            await self._ensure_image(docker)

            from nim_async.deploy.weights import prepare_weights

            prepared = await prepare_weights(config, quiet=self._quiet)

            name = config.container_name
            existing = await docker.inspect_container(name)
            if existing is not None:
                running = bool((existing.get("State") or {}).get("Running"))
                if running and config.use_existing_container:
                    return await self._reuse(docker, existing)
                if not config.auto_kill_existing_container:
                    raise ContainerExistsError(name)
                self._say(f"Removing the existing container [bold]{name}[/]")
                await docker.remove_container(str(existing["Id"]), force=True)

            env = [f"NGC_API_KEY={key}", f"NIM_MAX_MODEL_LEN={config.max_model_len}"]
            if config.served_model_name:
                env.append(f"NIM_SERVED_MODEL_NAME={config.served_model_name}")
            mounts: list[dict[str, Any]] = [
                {
                    "Type": "bind",
                    "Source": str(cache_dir.resolve()),
                    "Target": CONTAINER_CACHE_DIR,
                    "ReadOnly": False,
                }
            ]
            if prepared is not None:
                env.append(f"NIM_MODEL_NAME={prepared.container_dir}")
                mounts.append(
                    {
                        "Type": "bind",
                        "Source": str(prepared.host_dir.resolve()),
                        "Target": prepared.container_dir,
                        "ReadOnly": True,
                    }
                )
            labels = {
                MANAGED_LABEL: "true",
                CONFIG_HASH_LABEL: config.config_hash(),
                f"{_LABEL_PREFIX}image": config.image_ref,
            }
            if config.served_model_name:
                labels[f"{_LABEL_PREFIX}served_model_name"] = config.served_model_name
            host_config: dict[str, Any] = {
                "PortBindings": {
                    f"{CONTAINER_PORT}/tcp": [{"HostIp": config.host, "HostPort": str(config.port)}]
                },
                "ShmSize": config.shm_size_bytes,
                "Mounts": mounts,
                "AutoRemove": False,
            }
            devices = _device_requests(config.gpus)
            if devices is not None:
                host_config["DeviceRequests"] = devices
            body: dict[str, Any] = {
                "Image": config.image_ref,
                "Env": env,
                "User": f"{os.getuid()}:{os.getgid()}",
                "ExposedPorts": {f"{CONTAINER_PORT}/tcp": {}},
                "Labels": labels,
                "HostConfig": host_config,
            }
            try:
                container_id = await docker.create_container(name, body)
            except asyncio.CancelledError:
                # cancelled mid-request: the engine may have created it anyway
                await self._remove_if_ours(docker, name)
                raise
            try:
                self._say(
                    f"Starting [bold]{name}[/] ({config.image_ref}) on "
                    f"{config.host}:{config.port} -> {CONTAINER_PORT}/tcp"
                )
                await docker.start_container(container_id, port=config.port)
                self.timings.container_started = time.perf_counter()
                if config.stream_logs and self._console is not None:
                    self._log_task = asyncio.create_task(
                        self._stream_logs(docker, container_id, name)
                    )
                try:
                    await self._wait_ready(
                        docker, container_id, name, config.base_url, created=True
                    )
                    models = await self._models(config.base_url)
                finally:
                    await self._stop_log_task()
            except BaseException:
                await self._remove_quietly(docker, container_id)
                raise
        self._say(f"[green]Ready[/]: {name} at {config.base_url}")
        return NIMDeploymentResult(
            container_id=container_id,
            container_name=name,
            served_model_name=config.served_model_name or (models[0] if models else None),
            port=config.port,
            available_models=models,
            host=config.host,
        )

    async def _ensure_image(self, docker: DockerClient) -> None:
        config = self._config
        ref = config.image_ref
        if not config.force_pull and await docker.image_exists(ref):
            self._say(f"Image {ref} is present; not pulling (force_pull=True pulls anyway)")
            return
        auth = RegistryAuth(config.registry_server, REGISTRY_USER, config.nvidia_api_key)
        try:
            await docker.login(auth)
        except RegistryAuthError as exc:
            raise RegistryAuthError(
                f"The registry {config.registry_server} refused the login as '{REGISTRY_USER}' "
                "with the NGC API key from NIMConfig.nvidia_api_key (or NGC_API_KEY). Check that "
                "the key is valid and not expired (ngc.nvidia.com > Setup > API Key). "
                f"Registry said: {exc}",
                status_code=exc.status_code,
            ) from exc
        events = docker.pull(ref, auth)
        if self._console is None:
            async with contextlib.aclosing(events):
                async for _ in events:
                    pass
            return
        with _PullDisplay(self._console, ref) as display:
            async with contextlib.aclosing(events):
                async for event in events:
                    display.update(event)
        self._say(display.summary())

    async def _reuse(self, docker: DockerClient, info: dict[str, Any]) -> NIMDeploymentResult:
        config = self._config
        name = str(info.get("Name", "")).lstrip("/") or config.container_name
        container_id = str(info["Id"])
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(CONFIG_HASH_LABEL) not in (None, config.config_hash()):
            self._say(
                f"[yellow]Note[/]: the running container {name} was started with different "
                "settings; reusing it anyway (auto_kill_existing_container=True and "
                "use_existing_container=False replace it)"
            )
        host, port = _published(info)
        port = port or config.port
        host = host or config.host
        base_url = NIMDeploymentResult(
            container_id=container_id, container_name=name, port=port, host=host
        ).base_url
        self._say(f"Reusing the running container [bold]{name}[/] at {base_url}")
        await self._wait_ready(docker, container_id, name, base_url, created=False)
        models = await self._models(base_url)
        served = _env_value(info, "NIM_SERVED_MODEL_NAME")
        return NIMDeploymentResult(
            container_id=container_id,
            container_name=name,
            served_model_name=served or (models[0] if models else None),
            port=port,
            available_models=models,
            host=host,
            reused=True,
        )

    async def _wait_ready(
        self, docker: DockerClient, container_id: str, name: str, base_url: str, *, created: bool
    ) -> None:
        timeout = self._config.startup_timeout
        async with ReadinessProbe(base_url) as probe:
            ready = asyncio.create_task(probe.wait())
            exited = asyncio.create_task(docker.wait_container(container_id))
            try:
                done, _ = await asyncio.wait(
                    {ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (ready, exited):
                    task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(ready, exited, return_exceptions=True)
            if ready in done and not ready.cancelled() and ready.exception() is None:
                self.timings.ready = probe.ready_at
                return
            if exited in done:
                self.timings.exited = time.perf_counter()
                exit_code = exited.result()  # re-raises a Docker error from the watch
                info = await docker.inspect_container(container_id) or {}
                state = info.get("State") or {}
                logs = await self._tail_logs(docker, container_id)
                raise ContainerExitedError(
                    name,
                    int(state.get("ExitCode", exit_code)),
                    oom_killed=bool(state.get("OOMKilled")),
                    logs="\n".join(logs),
                )
            logs = await self._tail_logs(docker, container_id)
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

    async def _tail_logs(self, docker: DockerClient, container_id: str) -> list[str]:
        try:
            lines = await docker.container_logs(container_id, tail=LOG_TAIL)
        except NIMError:
            return []
        return [self._scrub(line) for line in lines]

    def _scrub(self, text: str) -> str:
        key = self._config.nvidia_api_key.get_secret_value()
        return text.replace(key, "***") if key else text

    async def _models(self, base_url: str) -> list[str] | None:
        async with ReadinessProbe(base_url) as probe:
            for attempt in range(3):
                try:
                    return await probe.models()
                except NIMError as exc:
                    if attempt == 2:
                        self._say(f"[yellow]Warning[/]: could not list the models: {exc}")
                    else:
                        await asyncio.sleep(0.1)
        return None

    async def _stream_logs(self, docker: DockerClient, container_id: str, name: str) -> None:
        console = self._console
        if console is None:
            return
        prefix = Text(f"{name} | ", style="dim")
        lines = docker.follow_logs(container_id)
        with contextlib.suppress(NIMError):
            async with contextlib.aclosing(lines):
                async for line in lines:
                    console.print(prefix + Text(self._scrub(line)), highlight=False)

    async def _stop_log_task(self) -> None:
        task, self._log_task = self._log_task, None
        if task is None:
            return
        task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _remove_if_ours(self, docker: DockerClient, name: str) -> None:
        with anyio.move_on_after(30, shield=True), contextlib.suppress(NIMError):
            info = await docker.inspect_container(name)
            labels = ((info or {}).get("Config") or {}).get("Labels") or {}
            state = ((info or {}).get("State") or {}).get("Status")
            if labels.get(CONFIG_HASH_LABEL) == self._config.config_hash() and state == "created":
                await docker.remove_container(name, force=True)

    async def _remove_quietly(self, docker: DockerClient, container_id: str) -> None:
        with anyio.move_on_after(30, shield=True):
            try:
                await docker.remove_container(container_id, force=True)
            except NIMError as exc:
                self._say(f"[yellow]Warning[/]: could not remove container {container_id}: {exc}")

    # ------------------------------------------------------------------ stop / list

    @classmethod
    async def stop(cls, container_name: str, quiet: bool = False, *, grace: float = 10.0) -> bool:
        """Stop a NIM container (SIGTERM, SIGKILL after ``grace`` seconds) and remove it.

        Args:
            container_name: Container name or id.
            quiet: Print nothing.
            grace: Seconds between SIGTERM and SIGKILL.

        Returns:
            ``True`` if the container was found (and is now gone), ``False`` if not.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
            APIError: For other Docker failures.
        """
        console = None if quiet else Console(stderr=True)
        async with DockerClient() as docker:
            info = await docker.inspect_container(container_name)
            if info is None:
                if console is not None:
                    console.print(f"No container named {container_name!r}")
                return False
            container_id = str(info["Id"])
            if (info.get("State") or {}).get("Running"):
                if console is not None:
                    console.print(f"Stopping {container_name} (grace {grace:g} s)")
                await docker.stop_container(container_id, grace=grace)
            removed = await docker.remove_container(container_id, force=True)
        if console is not None:
            console.print(f"Removed {container_name}")
        return removed or info is not None

    @classmethod
    async def status(cls, container_name: str) -> ContainerStatus | None:
        """The status of one container (managed or not), or ``None`` if there is none.

        Args:
            container_name: Container name or id.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
        """
        async with DockerClient() as docker:
            info = await docker.inspect_container(container_name)
        if info is None:
            return None
        state = info.get("State") or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        host, port = _published(info)
        return ContainerStatus(
            name=str(info.get("Name", "")).lstrip("/"),
            container_id=str(info.get("Id", "")),
            image=str((info.get("Config") or {}).get("Image", "")),
            state=str(state.get("Status", "")),
            status=_describe_state(state),
            host=host,
            port=port,
            served_model_name=_env_value(info, "NIM_SERVED_MODEL_NAME"),
            config_hash=labels.get(CONFIG_HASH_LABEL),
        )

    @classmethod
    async def list(cls) -> builtins.list[ContainerStatus]:
        """The containers managed by ``nim_async`` (running or not).

        Returns:
            One :class:`ContainerStatus` per labelled container.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
        """
        async with DockerClient() as docker:
            summaries = await docker.list_containers(labels={MANAGED_LABEL: "true"})
        statuses = []
        for item in summaries:
            labels = item.get("Labels") or {}
            host = port = None
            for binding in item.get("Ports") or []:
                if binding.get("PrivatePort") == CONTAINER_PORT and binding.get("PublicPort"):
                    host, port = binding.get("IP"), int(binding["PublicPort"])
                    break
            names = item.get("Names") or []
            statuses.append(
                ContainerStatus(
                    name=str(names[0]).lstrip("/") if names else str(item.get("Id", ""))[:12],
                    container_id=str(item.get("Id", "")),
                    image=str(item.get("Image", "")),
                    state=str(item.get("State", "")),
                    status=str(item.get("Status", "")),
                    host=host,
                    port=port,
                    served_model_name=labels.get(f"{_LABEL_PREFIX}served_model_name"),
                    config_hash=labels.get(CONFIG_HASH_LABEL),
                )
            )
        return statuses
