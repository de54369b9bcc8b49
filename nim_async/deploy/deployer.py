"""AsyncNIMDeployer: deploy a NIM container and wait until it serves.

The flow of :meth:`AsyncNIMDeployer.deploy`::

    validate (cache dir) -> pull unless present or force_pull (login first: $oauthtoken / key)
    -> custom weights (nim_async.deploy.weights.prepare_weights)
    -> existing containers of the deployment (reuse the set / remove it / ContainerExistsError)
    -> host ports port .. port+replicas-1 checked free (nim_async.deploy.ports)
    -> create every replica (the bodies from nim_async.deploy.spec) + start them
    -> stream logs (a task each) -> wait until all are ready, concurrently, while watching
       each container -> GET /v1/models -> NIMDeploymentResult (endpoints: one per replica)

``NIMConfig(replicas=N)`` deploys N containers of one image and config as one deployment
(names, ports, GPUs and labels: :mod:`nim_async.deploy.spec`); ``replicas=1`` is the single
container it always was. Reuse, auto-kill and :class:`ContainerExistsError` apply to the whole
set: it is reused only when every replica runs (and no extra one does). A deploy that fails or
is cancelled after creating containers removes every one it created (one replica that exits,
is not ready in time or cannot start fails the deploy, naming that replica); the image and the
cache stay. All Docker calls go through :mod:`nim_async.deploy.docker`; all HTTP calls
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
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

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
from nim_async.deploy.ports import check_ports_free
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    CONTAINER_PORT,
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    REPLICA_LABEL,
    ModelMount,
    container_spec,
    env_value,
    published_port,
    replica_base_url,
    replica_name,
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

_T = TypeVar("_T")


async def _all_or_nothing(steps: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``steps`` concurrently; the first to fail cancels the others (and waits for them).

    Returns:
        Their results, in order.

    Raises:
        BaseException: The first failure (the lowest index among those failed together);
            a cancellation from outside cancels every step before it propagates.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        error = failed[0].exception()
        assert error is not None
        raise error
    return [task.result() for task in tasks]


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


def _describe_member(info: dict[str, Any]) -> str:
    state = info.get("State") or {}
    name = str(info.get("Name", "")).lstrip("/")
    what = "running" if state.get("Running") else str(state.get("Status") or "unknown")
    if not _ours(info):
        what += f", not started by nim_async (no {MANAGED_LABEL} label)"
    return f"{name} ({what})"


def _set_exists_advice(
    config: NIMConfig, found: builtins.list[dict[str, Any]], names: builtins.list[str]
) -> str:
    """The ContainerExistsError message for a set of replicas that may not be reused."""
    name = config.container_name
    n = config.replicas
    running = {
        str(i.get("Name", "")).lstrip("/") for i in found if (i.get("State") or {}).get("Running")
    }
    reusable = (
        all(member in running for member in names)
        and len(found) == len(names)
        and all(_ours(i) for i in found)
    )
    fixes = ["set auto_kill_existing_container=True to replace them"]
    if reusable:  # the whole set runs: reuse was switched off
        fixes.insert(0, "set use_existing_container=True to reuse them")
    return (
        f"Deployment {name!r} (replicas={n}: {', '.join(names)}) has existing containers: "
        f"{', '.join(_describe_member(i) for i in found)}"
        + ("" if reusable else "; a set is reused only when every replica runs and no other does")
        + f". To go on: {', '.join(fixes)}, or remove them with NIMDeployer.stop({name!r}) "
        f"(nim-async stop {name})."
    )


def _with_replica(
    exc: BaseException, replica: int, n: int, name: str, port: int, *, created: bool = True
) -> None:
    """Say in ``exc``'s message which replica of ``n`` failed (no change for one replica)."""
    if n == 1 or not isinstance(exc, NIMError) or len(exc.args) != 1:
        return
    after = (
        f", so the deploy removes all {n} containers it created"
        if created
        else " (the running replicas were left as they are)"
    )
    exc.args = (
        f"Replica {replica} of {n} ({name!r}, host port {port}) failed{after}: {exc.args[0]}",
    )


class DeployTimings(BaseModel):
    """``time.perf_counter()`` marks of the last :meth:`AsyncNIMDeployer.deploy` (for benchmarks).

    Attributes:
        started: When ``deploy()`` began.
        container_started: When the container was started (the last replica's start).
        ready: When readiness was observed (of the last replica to become ready).
        exited: When a container's exit was observed.
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
        port_forward: Kubernetes: report a port-forward to ``127.0.0.1:config.port`` (one per
            replica, on ``config.port + i``; open until the deployer is closed) instead of the
            in-cluster Service URL.
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
        self._log_tasks: builtins.list[asyncio.Task[None]] = []
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
        """Deploy the NIM container(s) and wait until every one is ready.

        With ``config.replicas`` = N > 1, N containers (replica ``i`` named
        ``{container_name}-r{i}`` from 1 on, on host port ``port + i``) are started together and
        waited for concurrently; the result's :attr:`~NIMDeploymentResult.endpoints` lists
        their URLs.

        Returns:
            The deployment result (container id and name, port, served and available models,
            the endpoint of every replica).

        Raises:
            InvalidConfigError: If the cache directory cannot be used.
            RegistryAuthError: If the registry refuses the NGC key.
            ImagePullError: If the image cannot be pulled.
            ModelIncompatibilityError: If custom weights do not fit the image.
            ContainerExistsError: If containers of the deployment exist and may not be reused
                or removed.
            GPURuntimeError: If the host has no GPU container runtime.
            PortInUseError: If a host port of the range is taken (nothing is started).
            ContainerExitedError: If a container exits or is OOM-killed while starting.
            ServiceNotReadyError: If one is not ready within ``config.startup_timeout``.
            DockerUnavailableError: If the Docker daemon cannot be reached.
            APIError: For other Docker failures.

        With several replicas the error's message begins with the replica that failed
        (``Replica 1 of 3 ('name-r1', host port 8001) failed ...``); every container the
        deploy created is removed before it is raised.
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

    def _names(self) -> builtins.list[str]:
        config = self._config
        return [replica_name(config.container_name, i) for i in range(config.replicas)]

    async def _deploy(self) -> NIMDeploymentResult:
        config = self._config
        cache_dir = config.ensure_cache_dir()
        names = self._names()
        async with DockerClient(secrets=(config.nvidia_api_key.get_secret_value(),)) as docker:
            await self._ensure_image(docker)

            from nim_async.deploy.weights import prepare_weights

            prepared = await prepare_weights(config, quiet=self._quiet, on_event=self._sink)
            found = await self._existing(docker, names)
            if found:
                if self._reusable(found, names):
                    return await self._reuse(docker, found)
                await self._remove_existing(docker, found, names)
            check_ports_free(config.host, [config.port + i for i in range(len(names))])
            model = None
            if prepared is not None:
                model = ModelMount(prepared.host_dir, prepared.container_dir)
            user = (os.getuid(), os.getgid())
            bodies = [
                container_spec(config, cache_dir=cache_dir, model=model, user=user, replica=i)
                for i in range(len(names))
            ]
            created: builtins.list[str] = []
            try:
                ids = await _all_or_nothing(
                    [
                        self._create(docker, name, body, created)
                        for name, body in zip(names, bodies, strict=True)
                    ]
                )
                models = await self._start_and_wait(docker, ids, names)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _all_or_nothing([self._remove_quietly(docker, c) for c in created])
                raise
        name = config.container_name
        endpoints = [self._url(i) for i in range(len(names))]
        if len(names) == 1:
            self._state(DeployState.READY, name, f"{name} at {config.base_url}")
        else:
            self._state(
                DeployState.READY,
                name,
                f"{name}: {len(names)} replicas ready at {', '.join(endpoints)}",
            )
        return NIMDeploymentResult(
            container_id=ids[0],
            container_name=name,
            served_model_name=config.served_model_name or (models[0] if models else None),
            port=config.port,
            available_models=models,
            host=config.host,
            endpoints=endpoints,
        )

    def _url(self, replica: int) -> str:
        return replica_base_url(self._config, replica)

    async def _existing(
        self, docker: DockerClient, names: builtins.list[str]
    ) -> builtins.list[dict[str, Any]]:
        """The containers of this deployment: each replica's name, and any labelled with it.

        Returns:
            Inspect documents: the named replicas in order, then extra labelled ones.
        """
        infos = await asyncio.gather(*(docker.inspect_container(n) for n in names))
        found = [info for info in infos if info is not None]
        seen = {str(info["Id"]) for info in found}
        labelled = await docker.list_containers(
            labels={MANAGED_LABEL: "true", DEPLOYMENT_LABEL: self._config.container_name}
        )
        for item in labelled:
            if str(item.get("Id")) not in seen:
                info = await docker.inspect_container(str(item["Id"]))
                if info is not None:
                    found.append(info)
                    seen.add(str(info["Id"]))
        return found

    def _reusable(self, found: builtins.list[dict[str, Any]], names: builtins.list[str]) -> bool:
        """Whether ``found`` is exactly the running set of replicas nim_async started."""
        if not self._config.use_existing_container or len(found) != len(names):
            return False
        by_name = {str(info.get("Name", "")).lstrip("/"): info for info in found}
        return all(
            name in by_name
            and bool((by_name[name].get("State") or {}).get("Running"))
            and _ours(by_name[name])
            for name in names
        )

    async def _remove_existing(
        self,
        docker: DockerClient,
        found: builtins.list[dict[str, Any]],
        names: builtins.list[str],
    ) -> None:
        config = self._config
        if not config.auto_kill_existing_container:
            first = str(found[0].get("Name", "")).lstrip("/") or config.container_name
            if len(names) == 1 and len(found) == 1:
                raise ContainerExistsError(first, _exists_advice(config, found[0]))
            raise ContainerExistsError(first, _set_exists_advice(config, found, names))

        async def remove(info: dict[str, Any]) -> None:
            name = str(info.get("Name", "")).lstrip("/")
            self._state(
                DeployState.REMOVING_EXISTING, name, f"Removing the existing container {name}"
            )
            await docker.remove_container(str(info["Id"]), force=True)

        await _all_or_nothing([remove(info) for info in found])

    async def _create(
        self,
        docker: DockerClient,
        name: str,
        body: dict[str, Any],
        created: builtins.list[str],
    ) -> str:
        try:
            container_id = await docker.create_container(name, body)
        except asyncio.CancelledError:
            # cancelled mid-request: the engine may have created it anyway
            await self._remove_if_ours(docker, name)
            raise
        created.append(container_id)
        return container_id

    async def _start_and_wait(
        self, docker: DockerClient, ids: builtins.list[str], names: builtins.list[str]
    ) -> builtins.list[str] | None:
        try:
            await _all_or_nothing(
                [
                    self._start_replica(docker, i, cid, name)
                    for i, (cid, name) in enumerate(zip(ids, names, strict=True))
                ]
            )
            return await self._models(self._url(0))
        finally:
            await self._stop_log_task()

    async def _start_replica(
        self, docker: DockerClient, replica: int, container_id: str, name: str
    ) -> None:
        config = self._config
        n = config.replicas
        port = config.port + replica
        which = f" (replica {replica} of {n})" if n > 1 else ""
        self._state(
            DeployState.STARTING,
            name,
            f"Starting {name}{which} ({config.image_ref}) on "
            f"{config.host}:{port} -> {CONTAINER_PORT}/tcp",
        )
        try:
            await docker.start_container(container_id, port=port)
            self.timings.container_started = time.perf_counter()
            if config.stream_logs and self._sink is not None:
                self._log_tasks.append(
                    asyncio.create_task(self._stream_logs(docker, container_id, name))
                )
            await self._wait_ready(docker, container_id, name, self._url(replica), created=True)
        except NIMError as exc:
            _with_replica(exc, replica, n, name, port)
            raise

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

    async def _reuse(
        self, docker: DockerClient, found: builtins.list[dict[str, Any]]
    ) -> NIMDeploymentResult:
        config = self._config
        names = self._names()
        by_name = {str(info.get("Name", "")).lstrip("/"): info for info in found}
        infos = [by_name[name] for name in names]
        changed = [
            name
            for name, info in zip(names, infos, strict=True)
            if ((info.get("Config") or {}).get("Labels") or {}).get(CONFIG_HASH_LABEL)
            not in (None, config.config_hash())
        ]
        if changed:
            what = (
                f"the running container {changed[0]} was"
                if len(names) == 1
                else f"the running containers {', '.join(changed)} were"
            )
            self._emit(
                Notice(
                    f"{what} started with different settings; "
                    "reusing anyway (auto_kill_existing_container=True and "
                    "use_existing_container=False replace it)",
                    Level.NOTE,
                )
            )
        endpoints: builtins.list[tuple[str, int, str]] = []
        for replica, info in enumerate(infos):
            host, port = published_port(info)
            port = port or config.port + replica
            host = host or config.host
            base_url = NIMDeploymentResult(
                container_id="", container_name="", port=port, host=host
            ).base_url
            endpoints.append((host, port, base_url))

        async def wait(replica: int) -> None:
            name = names[replica]
            info = infos[replica]
            base_url = endpoints[replica][2]
            self._state(
                DeployState.REUSING, name, f"Reusing the running container {name} at {base_url}"
            )
            try:
                await self._wait_ready(docker, str(info["Id"]), name, base_url, created=False)
            except NIMError as exc:
                _with_replica(exc, replica, len(names), name, endpoints[replica][1], created=False)
                raise

        await _all_or_nothing([wait(i) for i in range(len(names))])
        host, port, base_url = endpoints[0]
        models = await self._models(base_url)
        served = env_value(infos[0], "NIM_SERVED_MODEL_NAME")
        return NIMDeploymentResult(
            container_id=str(infos[0]["Id"]),
            container_name=names[0],
            served_model_name=served or (models[0] if models else None),
            port=port,
            available_models=models,
            host=host,
            reused=True,
            endpoints=[url for _, _, url in endpoints],
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
        tasks, self._log_tasks = self._log_tasks, []
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

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

        A deployment of several replicas is stopped as a whole by its name (replica 0's
        container name, ``NIMConfig.container_name``): every replica, at once. Naming another
        replica's container (``name-r1``) stops only that one.

        With ``backend="kubernetes"``: delete every object the deploy of that name created
        (NIMService or Deployment + Service, the two secrets) and wait until its pods are gone.

        Args:
            container_name: Container name or id, or the deployment's name (Kubernetes: the
                deployment's name).
            quiet: Print nothing.
            grace: Seconds between SIGTERM and SIGKILL.
            on_event: Receives the state changes instead of the console.
            backend: ``"docker"`` or ``"kubernetes"``.
            namespace: Kubernetes namespace.
            context: Kubernetes kubeconfig context.
            kubeconfig: Kubeconfig path.

        Returns:
            ``True`` if anything was found (and is now gone), ``False`` if not.

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

        def state(state: DeployState, name: str, message: str) -> None:
            if sink is not None:
                sink(StateChanged(state, name, message))

        async with DockerClient() as docker:
            targets = await cls._stop_targets(docker, container_name)
            if not targets:
                state(
                    DeployState.NOT_FOUND,
                    container_name,
                    f"No container named {container_name!r}",
                )
                return False

            async def stop_one(info: dict[str, Any]) -> None:
                container_id = str(info["Id"])
                name = str(info.get("Name", "")).lstrip("/") or container_name
                if (info.get("State") or {}).get("Running"):
                    state(DeployState.STOPPING, name, f"Stopping {name} (grace {grace:g} s)")
                    await docker.stop_container(container_id, grace=grace)
                await docker.remove_container(container_id, force=True)
                state(DeployState.REMOVED, name, f"Removed {name}")

            # every replica at once: stop takes one grace period, not one per replica
            await asyncio.gather(*(stop_one(info) for info in targets))
        return True

    @classmethod
    async def _stop_targets(
        cls, docker: DockerClient, container_name: str
    ) -> builtins.list[dict[str, Any]]:
        """What ``stop(container_name)`` removes.

        The container of that name or id and, when it is a deployment's replica 0 (or no
        container has that name), every container labelled as that deployment's replica.
        """
        info = await docker.inspect_container(container_name)
        deployment: str | None = container_name
        if info is not None:
            labels = (info.get("Config") or {}).get("Labels") or {}
            replica = str(labels.get(REPLICA_LABEL) or "0")
            deployment = labels.get(DEPLOYMENT_LABEL) if replica == "0" and _ours(info) else None
        targets = [info] if info is not None else []
        if deployment:
            seen = {str(i["Id"]) for i in targets}
            members = await docker.list_containers(
                labels={MANAGED_LABEL: "true", DEPLOYMENT_LABEL: deployment}
            )
            for item in members:
                if str(item.get("Id")) in seen:
                    continue
                member = await docker.inspect_container(str(item["Id"]))
                if member is not None:
                    targets.append(member)
                    seen.add(str(member["Id"]))
        return targets

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
