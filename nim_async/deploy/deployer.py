"""AsyncNIMDeployer: deploy a NIM container and wait until it serves.

The flow of :meth:`AsyncNIMDeployer.deploy`::

    validate (cache dir) -> pull unless present or force_pull (login first: $oauthtoken / key)
    -> custom weights (nim_async.deploy.weights.prepare_weights)
    -> existing container (reuse / remove / ContainerExistsError)
    -> create (the body from nim_async.deploy.spec) + start
    -> stream logs (a task) -> wait ready while watching the container -> GET /v1/models
    -> NIMDeploymentResult

A deploy that fails or is cancelled after creating its container removes that container; the
image and the cache stay. All Docker calls go through :mod:`nim_async.deploy.docker`; all HTTP calls
through :mod:`nim_async.http.health`. Nothing connects to Docker before :meth:`deploy`, :meth:`stop`
or :meth:`list`. Progress, logs and state changes are :mod:`nim_async.deploy.events` values; the
deployer draws nothing itself.
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
from pydantic import BaseModel

from nim_async.config import NIMConfig
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.deploy.events import (
    DeployEvent,
    DeployState,
    EventSink,
    Level,
    LogLine,
    Notice,
    PullTracker,
    StateChanged,
    TransferFinished,
    resolve_sink,
)
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    CONTAINER_PORT,
    MANAGED_LABEL,
    ModelMount,
    container_spec,
    env_value,
    published_port,
)
from nim_async.deploy.status import ContainerStatus, status_from_inspect, status_from_summary
from nim_async.errors import (
    ContainerExistsError,
    ContainerExitedError,
    InvalidConfigError,
    NIMError,
    RegistryAuthError,
    ServiceNotReadyError,
)
from nim_async.http.health import ReadinessProbe
from nim_async.protocol.scrub import scrub
from nim_async.results import NIMDeploymentResult

__all__ = [
    "CONFIG_HASH_LABEL",
    "CONTAINER_PORT",
    "MANAGED_LABEL",
    "AsyncNIMDeployer",
    "ContainerStatus",
    "DeployTimings",
]

REGISTRY_USER = "$oauthtoken"
LOG_TAIL = 50
BACKENDS = ("docker", "kubernetes")


def _kubernetes() -> Any:
    """The Kubernetes backend's package (the optional extra ``nim-async[kubernetes]``)."""
    try:
        from nim_async.deploy import kubernetes
    except ModuleNotFoundError as exc:
        raise InvalidConfigError(
            f"backend='kubernetes' needs the kubernetes extra: pip install 'nim-async[kubernetes]' "
            f"({exc})",
            field="backend",
        ) from None
    return kubernetes


def _check_name(container_name: str) -> None:
    if not isinstance(container_name, str) or not container_name.strip():
        raise InvalidConfigError(
            f"container_name must be a container name or id, got {container_name!r}",
            field="container_name",
        )


def _ours(info: dict[str, Any]) -> bool:
    """Whether an inspected container was started by nim_async (it carries our label)."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(MANAGED_LABEL) == "true"


def _exists_advice(config: NIMConfig, info: dict[str, Any]) -> str:
    """The ContainerExistsError message for ``info``: only settings that would change things."""
    name = config.container_name
    state = info.get("State") or {}
    running = bool(state.get("Running"))
    fixes = ["set auto_kill_existing_container=True to replace it"]
    if not running:
        what = f"exists but is not running (status {state.get('Status') or 'unknown'})"
    elif not _ours(info):
        what = (
            f"is running but was not started by nim_async (it has no {MANAGED_LABEL} label), "
            "so it is not reused"
        )
        fixes.append("choose another served_model_name")
    else:  # running, ours: reuse was switched off
        what = "is running"
        fixes.insert(0, "set use_existing_container=True to reuse it")
    return (
        f"A container named {name!r} {what}. To go on: {', '.join(fixes)}, or remove it with "
        f"NIMDeployer.stop({name!r}) (nim-async stop {name})."
    )


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


class AsyncNIMDeployer:
    """Deploys a NIM container (async core of :class:`nim_async.NIMDeployer`).

    Progress (image pull, weights download), container logs and state changes are reported as
    :mod:`nim_async.deploy.events` values: to ``on_event`` when given, else drawn on ``console``
    unless ``quiet``.

    Args:
        config: Deployment configuration; ``None`` builds one from the environment
            (``NGC_API_KEY`` required).
        quiet: Print nothing at all.
        console: Where progress and logs are drawn (a rich console; default: one on stderr).
        on_event: Receives every deploy event instead of the console (also when ``quiet``).
        backend: ``"docker"`` (the local engine) or ``"kubernetes"``
            (:mod:`nim_async.deploy.kubernetes`: a NIMService where the NIM Operator is
            installed, else a Deployment + Service; needs ``nim-async[kubernetes]``).
        namespace: Kubernetes namespace (``backend="kubernetes"``).
        context: Kubernetes kubeconfig context (``None``: the current one).
        kubeconfig: Kubeconfig path (``None``: ``$KUBECONFIG`` or ``~/.kube/config``).
        port_forward: Kubernetes: report a port-forward to ``127.0.0.1:config.port`` (open
            until the deployer is closed) instead of the in-cluster Service URL.
        url: Kubernetes: the URL the NIM is reachable at from here (NodePort, ingress).

    Raises:
        InvalidConfigError: If ``config`` is ``None`` and the environment gives no valid key,
            or ``backend`` is unknown.
    """

    def __init__(
        self,
        config: NIMConfig | None = None,
        quiet: bool = False,
        *,
        console: Any = None,
        on_event: EventSink | None = None,
        backend: str = "docker",
        namespace: str = "default",
        context: str | None = None,
        kubeconfig: str | None = None,
        port_forward: bool = False,
        url: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise InvalidConfigError(
                f"backend must be one of {BACKENDS}, not {backend!r}", field="backend"
            )
        self._config = config if config is not None else NIMConfig()
        self._backend = backend
        self._kube_options: dict[str, Any] = {
            "namespace": namespace,
            "context": context,
            "kubeconfig": kubeconfig,
            "port_forward": port_forward,
            "url": url,
        }
        self._kube: Any = None
        self._quiet = quiet
        self._sink = resolve_sink(quiet=quiet, on_event=on_event, console=console)
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

    @property
    def backend(self) -> str:
        """Where it deploys: ``"docker"`` or ``"kubernetes"``."""
        return self._backend

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_log_task()
        kube, self._kube = self._kube, None
        if kube is not None:
            await kube.close()  # the port-forward, if one is open

    def __repr__(self) -> str:
        return f"AsyncNIMDeployer(image={self._config.image_ref!r}, quiet={self._quiet})"

    # ------------------------------------------------------------------ output

    def _emit(self, event: DeployEvent) -> None:
        if self._sink is not None:
            self._sink(event)

    def _state(self, state: DeployState, container: str, message: str) -> None:
        self._emit(StateChanged(state, container, message))

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
            if self._backend == "kubernetes":
                self._kube = _kubernetes().KubernetesBackend(
                    self._config, on_event=self._sink, **self._kube_options
                )
                result: NIMDeploymentResult = await self._kube.deploy()
                self.timings.ready = self._kube.ready_at
                return result
            return await self._deploy()
        finally:
            self.timings.finished = time.perf_counter()

    async def _deploy(self) -> NIMDeploymentResult:
        config = self._config
        cache_dir = config.ensure_cache_dir()
        async with DockerClient(secrets=(config.nvidia_api_key.get_secret_value(),)) as docker:
            await self._ensure_image(docker)

            from nim_async.deploy.weights import prepare_weights

            prepared = await prepare_weights(config, quiet=self._quiet, on_event=self._sink)
            existing = await docker.inspect_container(config.container_name)
            if existing is not None:
                running = bool((existing.get("State") or {}).get("Running"))
                if running and config.use_existing_container and _ours(existing):
                    return await self._reuse(docker, existing)
                await self._remove_existing(docker, existing)
            model = None
            if prepared is not None:
                model = ModelMount(prepared.host_dir, prepared.container_dir)
            body = container_spec(
                config, cache_dir=cache_dir, model=model, user=(os.getuid(), os.getgid())
            )
            container_id = await self._create(docker, body)
            try:
                models = await self._start_and_wait(docker, container_id)
            except BaseException:
                await self._remove_quietly(docker, container_id)
                raise
        name = config.container_name
        self._state(DeployState.READY, name, f"{name} at {config.base_url}")
        return NIMDeploymentResult(
            container_id=container_id,
            container_name=name,
            served_model_name=config.served_model_name or (models[0] if models else None),
            port=config.port,
            available_models=models,
            host=config.host,
        )

    async def _remove_existing(self, docker: DockerClient, existing: dict[str, Any]) -> None:
        name = self._config.container_name
        if not self._config.auto_kill_existing_container:
            raise ContainerExistsError(name, _exists_advice(self._config, existing))
        self._state(DeployState.REMOVING_EXISTING, name, f"Removing the existing container {name}")
        await docker.remove_container(str(existing["Id"]), force=True)

    async def _create(self, docker: DockerClient, body: dict[str, Any]) -> str:
        name = self._config.container_name
        try:
            return await docker.create_container(name, body)
        except asyncio.CancelledError:
            # cancelled mid-request: the engine may have created it anyway
            await self._remove_if_ours(docker, name)
            raise

    async def _start_and_wait(self, docker: DockerClient, container_id: str) -> list[str] | None:
        config = self._config
        name = config.container_name
        self._state(
            DeployState.STARTING,
            name,
            f"Starting {name} ({config.image_ref}) on "
            f"{config.host}:{config.port} -> {CONTAINER_PORT}/tcp",
        )
        await docker.start_container(container_id, port=config.port)
        self.timings.container_started = time.perf_counter()
        if config.stream_logs and self._sink is not None:
            self._log_task = asyncio.create_task(self._stream_logs(docker, container_id, name))
        try:
            await self._wait_ready(docker, container_id, name, config.base_url, created=True)
            return await self._models(config.base_url)
        finally:
            await self._stop_log_task()

    async def _ensure_image(self, docker: DockerClient) -> None:
        config = self._config
        ref = config.image_ref
        if not config.force_pull and await docker.image_exists(ref):
            self._state(
                DeployState.IMAGE_PRESENT,
                config.container_name,
                f"Image {ref} is present; not pulling (force_pull=True pulls anyway)",
            )
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
        tracker = PullTracker(ref)
        self._emit(tracker.start())
        summary: str | None = None
        try:
            async with contextlib.aclosing(docker.pull(ref, auth)) as events:
                async for raw in events:
                    event = tracker.feed(raw)
                    if event is not None:
                        self._emit(event)
            summary = tracker.summary()
        finally:
            self._emit(TransferFinished(summary))

    async def _reuse(self, docker: DockerClient, info: dict[str, Any]) -> NIMDeploymentResult:
        config = self._config
        name = str(info.get("Name", "")).lstrip("/") or config.container_name
        container_id = str(info["Id"])
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(CONFIG_HASH_LABEL) not in (None, config.config_hash()):
            self._emit(
                Notice(
                    f"the running container {name} was started with different settings; "
                    "reusing it anyway (auto_kill_existing_container=True and "
                    "use_existing_container=False replace it)",
                    Level.NOTE,
                )
            )
        host, port = published_port(info)
        port = port or config.port
        host = host or config.host
        base_url = NIMDeploymentResult(
            container_id=container_id, container_name=name, port=port, host=host
        ).base_url
        self._state(
            DeployState.REUSING, name, f"Reusing the running container {name} at {base_url}"
        )
        await self._wait_ready(docker, container_id, name, base_url, created=False)
        models = await self._models(base_url)
        served = env_value(info, "NIM_SERVED_MODEL_NAME")
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
        return scrub(text, (self._config.nvidia_api_key,))

    async def _models(self, base_url: str) -> list[str] | None:
        async with ReadinessProbe(base_url) as probe:
            for attempt in range(3):
                try:
                    return await probe.models()
                except NIMError as exc:
                    if attempt == 2:
                        self._emit(Notice(f"could not list the models: {exc}", Level.WARNING))
                    else:
                        await asyncio.sleep(0.1)
        return None

    async def _stream_logs(self, docker: DockerClient, container_id: str, name: str) -> None:
        lines = docker.follow_logs(container_id)
        with contextlib.suppress(NIMError):
            async with contextlib.aclosing(lines):
                async for line in lines:
                    self._emit(LogLine(name, self._scrub(line)))

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
                message = f"could not remove container {container_id}: {exc}"
                self._emit(Notice(message, Level.WARNING))

    # ------------------------------------------------------------------ stop / list

    @classmethod
    async def stop(
        cls,
        container_name: str,
        quiet: bool = False,
        *,
        grace: float = 10.0,
        on_event: EventSink | None = None,
        backend: str = "docker",
        namespace: str = "default",
        context: str | None = None,
        kubeconfig: str | None = None,
    ) -> bool:
        """Stop a NIM container (SIGTERM, SIGKILL after ``grace`` seconds) and remove it.

        With ``backend="kubernetes"``: delete every object the deploy of that name created
        (NIMService or Deployment + Service, the two secrets) and wait until its pods are gone.

        Args:
            container_name: Container name or id (Kubernetes: the deployment's name).
            quiet: Print nothing.
            grace: Seconds between SIGTERM and SIGKILL.
            on_event: Receives the state changes instead of the console.
            backend: ``"docker"`` or ``"kubernetes"``.
            namespace: Kubernetes namespace.
            context: Kubernetes kubeconfig context.
            kubeconfig: Kubeconfig path.

        Returns:
            ``True`` if the container was found (and is now gone), ``False`` if not.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
            APIError: For other Docker failures.
            InvalidConfigError: If ``container_name`` is empty.
        """
        _check_name(container_name)
        sink = resolve_sink(quiet=quiet, on_event=on_event)
        if backend == "kubernetes":
            kube = _kubernetes().KubernetesBackend(
                NIMConfig.model_construct(),
                namespace=namespace,
                context=context,
                kubeconfig=kubeconfig,
                on_event=sink,
            )
            return bool(await kube.stop(container_name, grace=max(grace, 30.0)))

        def state(state: DeployState, message: str) -> None:
            if sink is not None:
                sink(StateChanged(state, container_name, message))

        async with DockerClient() as docker:
            info = await docker.inspect_container(container_name)
            if info is None:
                state(DeployState.NOT_FOUND, f"No container named {container_name!r}")
                return False
            container_id = str(info["Id"])
            if (info.get("State") or {}).get("Running"):
                state(DeployState.STOPPING, f"Stopping {container_name} (grace {grace:g} s)")
                await docker.stop_container(container_id, grace=grace)
            removed = await docker.remove_container(container_id, force=True)
        state(DeployState.REMOVED, f"Removed {container_name}")
        return removed or info is not None

    @classmethod
    async def status(cls, container_name: str) -> ContainerStatus | None:
        """The status of one container (managed or not), or ``None`` if there is none.

        Args:
            container_name: Container name or id.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
            InvalidConfigError: If ``container_name`` is empty.
        """
        _check_name(container_name)
        async with DockerClient() as docker:
            info = await docker.inspect_container(container_name)
        if info is None:
            return None
        return status_from_inspect(info)

    @classmethod
    async def list(
        cls,
        *,
        backend: str = "docker",
        namespace: str = "default",
        context: str | None = None,
        kubeconfig: str | None = None,
    ) -> builtins.list[ContainerStatus]:
        """The containers managed by ``nim_async`` (running or not).

        Args:
            backend: ``"docker"``, or ``"kubernetes"`` for the NIMServices / Deployments
                ``nim_async`` made in ``namespace``.
            namespace: Kubernetes namespace.
            context: Kubernetes kubeconfig context.
            kubeconfig: Kubeconfig path.

        Returns:
            One :class:`ContainerStatus` per labelled container.

        Raises:
            DockerUnavailableError: If the Docker daemon cannot be reached.
        """
        if backend == "kubernetes":
            rows: builtins.list[ContainerStatus] = await _kubernetes().KubernetesBackend.list(
                namespace=namespace, context=context, kubeconfig=kubeconfig
            )
            return rows
        async with DockerClient() as docker:
            summaries = await docker.list_containers(labels={MANAGED_LABEL: "true"})
        return [status_from_summary(item) for item in summaries]
