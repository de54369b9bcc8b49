"""AsyncNIMDeployer: deploy a NIM container and wait until it serves.

The flow of :meth:`AsyncNIMDeployer.deploy`::

    validate (cache dir) -> pull unless present or force_pull (login first: $oauthtoken / key)
    -> custom weights (nim_async.deploy.weights.prepare_weights)
    -> existing containers of the deployment (reuse the set / remove it / ContainerExistsError)
    -> host ports port .. port+replicas-1 checked free (nim_async.deploy.ports)
    -> create every replica (the bodies from nim_async.deploy.spec) + start them
    -> stream logs (a task each) -> wait until all are ready, concurrently, while watching
       each container -> GET /v1/models -> NIMDeploymentResult (endpoints: one per replica)

Who does what: the replicas (names, ports, URLs) and the decisions about existing containers
are :mod:`nim_async.deploy.replicas` (IO-free); creating, starting, removing and stopping the
set is :mod:`nim_async.deploy.containers`; waiting for one container to serve and following its
logs is :mod:`nim_async.deploy.watch`. This module runs the flow above and the
``stop``/``status``/``list`` calls.

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

import builtins
import contextlib
import os
import time
from types import TracebackType
from typing import Any, Self

from nim_async.config import NIMConfig
from nim_async.deploy.containers import (
    ReplicaSetLauncher,
    find_members,
    stop_members,
    stop_targets,
)
from nim_async.deploy.docker import DockerClient, RegistryAuth
from nim_async.deploy.events import (
    DeployEvent,
    DeployState,
    EventSink,
    Level,
    Notice,
    PullTracker,
    StateChanged,
    TransferFinished,
    resolve_sink,
)
from nim_async.deploy.ports import check_ports_free
from nim_async.deploy.replicas import (
    ExistingSetAction,
    Replica,
    existing_set_action,
    exists_error,
    in_replica_order,
    plan_replicas,
    reuse_notice,
    reused_replicas,
)
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    CONTAINER_PORT,
    MANAGED_LABEL,
    ModelMount,
    container_spec,
    env_value,
)
from nim_async.deploy.status import ContainerStatus, status_from_inspect, status_from_summary
from nim_async.deploy.timings import DeployTimings
from nim_async.deploy.watch import LOG_TAIL as LOG_TAIL
from nim_async.deploy.watch import LogFollower, list_models
from nim_async.errors import InvalidConfigError, RegistryAuthError
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
        self._logs = LogFollower(self._emit, self._scrub)
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
        await self._logs.stop()
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

    def _scrub(self, text: str) -> str:
        return scrub(text, (self._config.nvidia_api_key,))

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

    async def _deploy(self) -> NIMDeploymentResult:
        config = self._config
        if config.merge_adapter and (config.run_id is not None or config.model_path is not None):
            from nim_async.deploy.lora import require_merge_support

            require_merge_support()  # before the image pull: names pip install 'nim-async[merge]'
        cache_dir = config.ensure_cache_dir()
        replicas = plan_replicas(config)
        names = [replica.name for replica in replicas]
        async with DockerClient(secrets=(config.nvidia_api_key.get_secret_value(),)) as docker:
            await self._ensure_image(docker)

            from nim_async.deploy.weights import prepare_weights

            prepared = await prepare_weights(config, quiet=self._quiet, on_event=self._sink)
            launcher = self._launcher(docker)
            found = await find_members(docker, names, config.container_name)
            if found:
                action = existing_set_action(config, found, names)
                if action is ExistingSetAction.REUSE:
                    return await self._reuse(launcher, found)
                if action is ExistingSetAction.REFUSE:
                    raise exists_error(config, found, names)
                await launcher.remove_existing(found)
            check_ports_free(config.host, [replica.port for replica in replicas])
            model = None
            if prepared is not None:
                model = ModelMount(prepared.host_dir, prepared.container_dir)
            user = (os.getuid(), os.getgid())
            bodies = [
                container_spec(config, cache_dir=cache_dir, model=model, user=user, replica=i)
                for i in range(len(replicas))
            ]
            ids, models = await launcher.launch(replicas, bodies)
        self._report_ready(replicas)
        return NIMDeploymentResult(
            container_id=ids[0],
            container_name=config.container_name,
            served_model_name=config.served_model_name or (models[0] if models else None),
            port=config.port,
            available_models=models,
            host=config.host,
            endpoints=[replica.url for replica in replicas],
        )

    def _launcher(self, docker: DockerClient) -> ReplicaSetLauncher:
        return ReplicaSetLauncher(
            docker,
            self._config,
            emit=self._emit,
            timings=self.timings,
            logs=self._logs if self._sink is not None else None,
            scrub=self._scrub,
        )

    def _report_ready(self, replicas: builtins.list[Replica]) -> None:
        name = self._config.container_name
        if len(replicas) == 1:
            self._state(DeployState.READY, name, f"{name} at {self._config.base_url}")
            return
        self._state(
            DeployState.READY,
            name,
            f"{name}: {len(replicas)} replicas ready at "
            f"{', '.join(replica.url for replica in replicas)}",
        )

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
        self, launcher: ReplicaSetLauncher, found: builtins.list[dict[str, Any]]
    ) -> NIMDeploymentResult:
        config = self._config
        infos = in_replica_order(found, plan_replicas(config))
        replicas = reused_replicas(config, infos)
        notice = reuse_notice(config, replicas, infos)
        if notice is not None:
            self._emit(Notice(notice, Level.NOTE))
        await launcher.wait_reused(replicas, infos)
        first = replicas[0]
        models = await list_models(first.url, self._emit)
        served = env_value(infos[0], "NIM_SERVED_MODEL_NAME")
        return NIMDeploymentResult(
            container_id=str(infos[0]["Id"]),
            container_name=first.name,
            served_model_name=served or (models[0] if models else None),
            port=first.port,
            available_models=models,
            host=first.host,
            reused=True,
            endpoints=[replica.url for replica in replicas],
        )

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

        def emit(event: DeployEvent) -> None:
            if sink is not None:
                sink(event)

        async with DockerClient() as docker:
            targets = await stop_targets(docker, container_name)
            if not targets:
                message = f"No container named {container_name!r}"
                emit(StateChanged(DeployState.NOT_FOUND, container_name, message))
                return False
            await stop_members(docker, targets, grace=grace, emit=emit, fallback=container_name)
        return True

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
