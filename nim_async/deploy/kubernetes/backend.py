"""Deploy a NIM to Kubernetes: a NIMService when the NIM Operator is installed, else a Deployment.

The flow of :meth:`KubernetesBackend.deploy`::

    refuse custom weights (not yet supported here)
    -> the NGC pull secret + the API-key secret (labelled, never printed)
    -> NIMService (CRD installed) | Deployment + Service
    -> watch until ready: the NIMService's status / the pods' conditions
       (pull refused -> RegistryAuthError, other pull errors -> ImagePullError,
        unschedulable for nvidia.com/gpu -> GPURuntimeError, crash -> ContainerExitedError,
        nothing within startup_timeout -> ServiceNotReadyError)
    -> the endpoint: a URL the caller names | a port-forward | the in-cluster Service URL
    -> NIMDeploymentResult

``NIMConfig(replicas=N)`` is the Deployment's (NIMService's) ``replicas``; the deploy waits for N
ready pods. ``endpoints``: with ``port_forward`` one forward per ready pod, on local ports
``port .. port+N-1`` (so a predictor can spread requests and fail over per pod, as over Docker
replicas); with a URL or the in-cluster Service, that one address (the Service balances).

A deploy that fails removes what it created (as the Docker path removes its container). All API
calls go through :mod:`nim_async.deploy.kubernetes.client`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

from nim_async.config import NIMConfig
from nim_async.deploy.events import DeployState, EventSink, Level, Notice, StateChanged
from nim_async.deploy.kubernetes import manifests
from nim_async.deploy.kubernetes.client import KubeClient, PortForward
from nim_async.deploy.kubernetes.manifests import (
    INSTANCE_LABEL,
    KubeSettings,
    object_name,
)
from nim_async.deploy.kubernetes.pods import (
    FailureKind,
    PodFailure,
    ServiceState,
    nimservice_state,
    pod_failure,
    pod_ready,
    pod_summary,
)
from nim_async.deploy.spec import CONTAINER_PORT, MANAGED_LABEL
from nim_async.deploy.status import ContainerStatus
from nim_async.errors import (
    APIError,
    ContainerExitedError,
    GPURuntimeError,
    ImagePullError,
    InvalidConfigError,
    NIMError,
    RegistryAuthError,
    ServiceNotReadyError,
)
from nim_async.http.health import ReadinessProbe
from nim_async.protocol.scrub import scrub
from nim_async.results import NIMDeploymentResult

__all__ = ["MODES", "KubernetesBackend"]

MODES = ("auto", "nimservice", "deployment")
"""``auto``: a NIMService when its CRD is installed, else a Deployment + Service."""
LOG_TAIL = 50
KINDS_OWNED = ("NIMService", "Deployment", "Service", "Secret")


class KubernetesBackend:
    """Deploys one NIM to a Kubernetes cluster (``AsyncNIMDeployer(backend="kubernetes")``).

    Args:
        config: The deployment configuration (image, key, shm, GPUs, timeout, ...).
        namespace: The namespace every object goes into.
        context: The kubeconfig context (``None``: the current one).
        kubeconfig: The kubeconfig path (``None``: ``$KUBECONFIG`` or ``~/.kube/config``).
        mode: One of :data:`MODES`.
        port_forward: Open a port-forward from ``127.0.0.1:<local_port>`` to a ready pod (one
            per replica: pod ``i`` on ``local_port + i``) and report those as the endpoints
            (kept open until :meth:`close`).
        local_port: The first port-forward's local port (``None``: ``config.port``; 0: free
            ones).
        url: The URL the NIM is reachable at from here (NodePort, ingress); reported as is.
        settings: User, cache claim and service type (the namespace comes from ``namespace``).
        on_event: Receives state changes and notices.
    """

    def __init__(
        self,
        config: NIMConfig,
        *,
        namespace: str = "default",
        context: str | None = None,
        kubeconfig: str | None = None,
        mode: str = "auto",
        port_forward: bool = False,
        local_port: int | None = None,
        url: str | None = None,
        settings: KubeSettings | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        if mode not in MODES:
            raise InvalidConfigError(f"mode must be one of {MODES}, not {mode!r}", field="mode")
        base = settings or KubeSettings()
        self.config = config
        self.settings = KubeSettings(
            namespace=namespace,
            run_as=base.run_as,
            cache_pvc=base.cache_pvc,
            service_type=base.service_type,
        )
        self.context = context
        self.kubeconfig = kubeconfig
        self.mode = mode
        self.port_forward = port_forward
        self.local_port = config.port if local_port is None else local_port
        self.url = url
        self._sink = on_event
        self._forwards: list[PortForward] = []
        self._client: KubeClient | None = None
        self.kind: str | None = None
        self.ready_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"KubernetesBackend(image={self.config.image_ref!r}, "
            f"namespace={self.settings.namespace!r}, context={self.context!r})"
        )

    # ------------------------------------------------------------------ output

    def _state(self, state: DeployState, message: str, name: str | None = None) -> None:
        if self._sink is not None:
            self._sink(StateChanged(state, name or object_name(self.config), message))

    def _notice(self, message: str, level: Level = Level.NOTE) -> None:
        if self._sink is not None:
            self._sink(Notice(message, level))

    def _scrub(self, text: str) -> str:
        return scrub(text, (self.config.nvidia_api_key,))

    # ------------------------------------------------------------------ deploy

    async def deploy(self) -> NIMDeploymentResult:
        """Create the objects and wait until the NIM is ready.

        Returns:
            The result; its ``base_url`` is the URL given, the port-forward, or the in-cluster
            Service URL.

        Raises:
            InvalidConfigError: For custom weights (not yet supported on Kubernetes), GPU
                groups of different sizes, or an unusable kubeconfig.
            RegistryAuthError: If the registry refuses the pull secret.
            ImagePullError: If the image cannot be pulled for another reason.
            GPURuntimeError: If no node offers the ``nvidia.com/gpu`` asked for.
            ContainerExitedError: If the container crashes while starting.
            ServiceNotReadyError: If it is not ready within ``config.startup_timeout`` (or the
                NIM Operator reports the NIMService failed).
            APIError: If the API server cannot be reached or refuses a request.
        """
        config = self.config
        if config.run_id or config.model_path:
            raise InvalidConfigError(
                "custom weights (run_id / model_path) are not yet supported on Kubernetes; "
                "deploy them with the Docker backend, or serve the stock model here",
                field="run_id" if config.run_id else "model_path",
            )
        manifests.gpu_count(config)  # refuses GPU groups pods cannot express, before any call
        name = object_name(config)
        ns = self.settings.namespace
        client = KubeClient(self.kubeconfig, self.context)
        async with client:
            use_crd = self.mode == "nimservice" or (
                self.mode == "auto" and await client.crd_installed()
            )
            self.kind = "NIMService" if use_crd else "Deployment"
            self._state(
                DeployState.STARTING,
                f"Creating {self.kind} {ns}/{name} ({config.image_ref}) on {client.server}",
            )
            try:
                await client.apply(manifests.pull_secret(config, self.settings))
                await client.apply(manifests.api_key_secret(config, self.settings))
                if use_crd:
                    created = await client.apply(manifests.nim_service(config, self.settings))
                else:
                    created = await client.apply(manifests.deployment(config, self.settings))
                    await client.apply(manifests.service(config, self.settings))
                pods = await self._wait_ready(client, name, use_crd)
                self.ready_at = time.perf_counter()
                host, port, endpoints = await self._endpoint(client, name, pods, use_crd)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._remove(client, name, wait=False))
                await self.close()
                raise
            uid = str((created.get("metadata") or {}).get("uid", ""))
        models = await self._models(host, port) if (self.port_forward or self.url) else None
        result = NIMDeploymentResult(
            container_id=uid,
            container_name=name,
            served_model_name=config.served_model_name or (models[0] if models else None),
            port=port,
            available_models=models,
            host=host,
            endpoints=endpoints,
        )
        where = ", ".join(result.endpoints) if len(result.endpoints) > 1 else result.base_url
        self._state(DeployState.READY, f"{self.kind} {ns}/{name} at {where}")
        return result

    async def close(self) -> None:
        """Close the port-forwards, if any were opened."""
        forwards, self._forwards = self._forwards, []
        for forward in forwards:
            await forward.close()
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    async def _endpoint(
        self, client: KubeClient, name: str, pods: builtins.list[str], use_crd: bool
    ) -> tuple[str, int, builtins.list[str]]:
        """Where the NIM is reached: ``(host, port)`` of the first endpoint, and every one."""
        if self.url:
            parts = urlsplit(self.url)
            if not parts.hostname:
                raise InvalidConfigError(f"not a URL: {self.url!r}", field="url")
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
            return host, port, [self.url.rstrip("/")]
        if self.port_forward:
            if not pods:
                pods = await self._ready_pods(client, name, use_crd)
            # each forward outlives this call's client: it has its own websocket client
            for i, pod in enumerate(pods):
                local = self.local_port + i if self.local_port else 0
                forward = client.port_forward(
                    pod, self.settings.namespace, CONTAINER_PORT, local_port=local
                )
                await forward.start()
                self._forwards.append(forward)
                self._notice(
                    f"port-forward 127.0.0.1:{forward.local_port} -> {pod}:{CONTAINER_PORT}"
                )
            return "127.0.0.1", self._forwards[0].local_port, [f.url for f in self._forwards]
        service = name
        if use_crd:
            obj = await client.read("NIMService", name, self.settings.namespace) or {}
            exposed = ((obj.get("spec") or {}).get("expose") or {}).get("service") or {}
            service = str(exposed.get("name") or name)
        host = f"{service}.{self.settings.namespace}.svc.cluster.local"
        return host, CONTAINER_PORT, [f"http://{host}:{CONTAINER_PORT}"]

    async def _ready_pods(self, client: KubeClient, name: str, use_crd: bool) -> builtins.list[str]:
        """The ready pods of the deployment (at most ``replicas``), by name."""
        selector = f"app={name}" if use_crd else f"{INSTANCE_LABEL}={name}"
        pods, _ = await client.list("Pod", self.settings.namespace, selector)
        ready = sorted(str(pod["metadata"]["name"]) for pod in pods if pod_ready(pod))
        if not ready:
            raise ServiceNotReadyError(
                name, self.config.startup_timeout, f"no ready pod of {name} to port-forward to"
            )
        wanted = manifests.replicas_of(self.config)
        if len(ready) < wanted:
            self._notice(
                f"{len(ready)} of {wanted} pods of {name} are ready; forwarding to those",
                Level.WARNING,
            )
        return ready[:wanted]

    async def _models(self, host: str, port: int) -> list[str] | None:
        base = NIMDeploymentResult(container_id="", container_name="", port=port, host=host)
        try:
            async with ReadinessProbe(base.base_url) as probe:
                return await probe.models()
        except NIMError as exc:
            self._notice(f"could not list the models: {exc}", Level.WARNING)
            return None

    # ------------------------------------------------------------------ readiness

    async def _wait_ready(self, client: KubeClient, name: str, use_crd: bool) -> builtins.list[str]:
        timeout = self.config.startup_timeout
        last: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                if use_crd:
                    await self._watch_nimservice(client, name, last)
                    return []
                return await self._watch_pods(client, name, last)
        except TimeoutError:
            pass
        where = f"{self.kind} {self.settings.namespace}/{name}"
        message = f"{where} was not ready after {timeout:g} seconds"
        if last:
            message += f"; last seen: {self._scrub(last[-1])}"
        message += ". Raise NIMConfig.startup_timeout if the model needs longer to load."
        raise ServiceNotReadyError(name, timeout, message)

    async def _watch_nimservice(self, client: KubeClient, name: str, last: list[str]) -> None:
        events = client.watch(
            "NIMService", self.settings.namespace, field_selector=f"metadata.name={name}"
        )
        async with contextlib.aclosing(events):
            async for kind, obj in events:
                if kind == "DELETED":
                    raise ServiceNotReadyError(
                        name, self.config.startup_timeout, f"NIMService {name} was deleted"
                    )
                state, message = nimservice_state(obj)
                last.append(message)
                if state is ServiceState.READY:
                    return
                if state is ServiceState.FAILED:
                    raise self._service_failed(name, self._scrub(message))

    def _service_failed(self, name: str, message: str) -> NIMError:
        text = f"the NIM Operator reports NIMService {self.settings.namespace}/{name} failed: "
        text += message
        lowered = message.lower()
        if "imagepull" in lowered or "errimagepull" in lowered:
            return PodFailureMapper.pull(text, message)
        return ServiceNotReadyError(name, self.config.startup_timeout, text)

    async def _watch_pods(
        self, client: KubeClient, name: str, last: builtins.list[str]
    ) -> builtins.list[str]:
        """Watch the pods until ``replicas`` of them are ready; their names, sorted."""
        wanted = manifests.replicas_of(self.config)
        pods: dict[str, dict[str, Any]] = {}
        events = client.watch(
            "Pod", self.settings.namespace, label_selector=f"{INSTANCE_LABEL}={name}"
        )
        async with contextlib.aclosing(events):
            async for kind, pod in events:
                pod_name = str((pod.get("metadata") or {}).get("name"))
                if kind == "DELETED":
                    pods.pop(pod_name, None)
                    continue
                pods[pod_name] = pod
                last.append(pod_summary(pod))
                failure = pod_failure(pod)
                if failure is not None:
                    raise await self._pod_error(client, name, failure)
                ready = sorted(n for n, p in pods.items() if pod_ready(p))
                if len(ready) >= wanted:
                    return ready[:wanted]
        raise ServiceNotReadyError(name, self.config.startup_timeout, "the pod watch ended")

    async def _pod_error(self, client: KubeClient, name: str, failure: PodFailure) -> NIMError:
        ns = self.settings.namespace
        message = self._scrub(failure.message)
        if failure.kind in (FailureKind.REGISTRY_AUTH, FailureKind.IMAGE_PULL):
            detail = message
            if failure.kind is FailureKind.IMAGE_PULL or "Back-off" in message:
                # ImagePullBackOff says little; the kubelet's Failed event has the registry's word
                with contextlib.suppress(APIError):
                    for event in await client.events_for(failure.pod, ns):
                        if event.get("reason") == "Failed" and "pull" in str(
                            event.get("message", "")
                        ):
                            detail = self._scrub(str(event["message"]))
            text = (
                f"pod {ns}/{failure.pod} cannot pull {self.config.image_ref} with the pull secret "
                f"{manifests.pull_secret_name(self.config)} ($oauthtoken + the NGC key): {detail}"
            )
            return PodFailureMapper.pull(text, detail)
        if failure.kind is FailureKind.NO_GPU:
            return GPURuntimeError(
                f"pod {ns}/{failure.pod} cannot be scheduled: no node has the nvidia.com/gpu "
                f"asked for (is the NVIDIA device plugin / GPU Operator installed?): {message}"
            )
        logs = await _crash_log(client, failure.pod, ns)
        return ContainerExitedError(
            name,
            failure.exit_code if failure.exit_code is not None else -1,
            oom_killed=failure.oom_killed,
            logs=self._scrub(logs.rstrip("\n")),
        )

    # ------------------------------------------------------------------ stop / list

    async def _remove(
        self, client: KubeClient, name: str, *, wait: bool, grace: float = 60.0
    ) -> bool:
        """Delete the deployment's objects; ``wait``: until its pods are gone (``stop``).

        ``stop`` waits up to ``grace`` s for the pods to terminate, then deletes what is left
        with grace 0 (the kubelet kills anything still running). A deploy that failed (its pods
        never served) does that at once: a pod stuck pulling an image otherwise stays
        Terminating for half a minute after the error was raised.
        """
        ns = self.settings.namespace
        selector = f"{MANAGED_LABEL}=true,{INSTANCE_LABEL}={name}"
        found = False
        for kind in KINDS_OWNED:
            if kind == "NIMService" and not await client.crd_installed():
                continue
            items, _ = await client.list(kind, ns, selector)
            for item in items:
                found = await client.delete(kind, str(item["metadata"]["name"]), ns) or found
        if wait and await self._gone(client, name, selector, grace):
            return found
        left = await self._delete_pods_now(client, name, selector)
        if wait and left:
            self._notice(
                f"{left} pod(s) of {ns}/{name} still there after {grace:g} s; deleted with grace 0",
                Level.WARNING,
            )
            await self._gone(client, name, selector, 10.0)
        return found

    async def _gone(self, client: KubeClient, name: str, selector: str, seconds: float) -> bool:
        """Wait up to ``seconds`` until no pod and no Deployment of ``name`` is left."""
        ns = self.settings.namespace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    pods, _ = await client.list("Pod", ns, f"{INSTANCE_LABEL}={name}")
                    left, _ = await client.list("Deployment", ns, selector)
                    if not pods and not left:
                        return True
                    await asyncio.sleep(0.5)
        return False

    async def _delete_pods_now(self, client: KubeClient, name: str, selector: str) -> int:
        """Delete the pods left with grace 0 once nothing can make new ones; how many."""
        ns = self.settings.namespace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):  # the garbage collector removes the ReplicaSet
                while True:
                    owners, _ = await client.list("ReplicaSet", ns, selector)
                    left, _ = await client.list("Deployment", ns, selector)
                    if not owners and not left:
                        break
                    await asyncio.sleep(0.5)
        pods, _ = await client.list("Pod", ns, f"{INSTANCE_LABEL}={name}")
        for pod in pods:
            await client.delete("Pod", str(pod["metadata"]["name"]), ns, grace_seconds=0)
        return len(pods)

    async def stop(self, name: str | None = None, *, grace: float = 60.0) -> bool:
        """Delete every object of the deployment and wait until its pods are gone.

        Args:
            name: The deployment's name (default: the config's).
            grace: Seconds to wait for the pods to go.

        Returns:
            ``True`` if anything was found (and is now gone).

        Raises:
            APIError: If the API server cannot be reached or refuses.
        """
        target = name or object_name(self.config)
        self._state(DeployState.STOPPING, f"Deleting {self.settings.namespace}/{target}", target)
        async with KubeClient(self.kubeconfig, self.context) as client:
            found = await self._remove(client, target, wait=True, grace=grace)
        if found:
            self._state(DeployState.REMOVED, f"Removed {self.settings.namespace}/{target}", target)
        else:
            self._state(
                DeployState.NOT_FOUND,
                f"Nothing named {target!r} in {self.settings.namespace}",
                target,
            )
        return found

    @staticmethod
    async def list(
        *, namespace: str = "default", context: str | None = None, kubeconfig: str | None = None
    ) -> builtins.list[ContainerStatus]:
        """The NIM deployments ``nim_async`` made in ``namespace`` (NIMServices, Deployments).

        Args:
            namespace: The namespace.
            context: The kubeconfig context.
            kubeconfig: The kubeconfig path.
        """
        rows: builtins.list[ContainerStatus] = []
        async with KubeClient(kubeconfig, context) as client:
            kinds = ["Deployment"]
            if await client.crd_installed():
                kinds.insert(0, "NIMService")
            seen: set[str] = set()
            for kind in kinds:
                items, _ = await client.list(kind, namespace, f"{MANAGED_LABEL}=true")
                for item in items:
                    row = _status_row(kind, item)
                    if row.name not in seen:
                        seen.add(row.name)
                        rows.append(row)
        return rows


def _status_row(kind: str, item: dict[str, Any]) -> ContainerStatus:
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    if kind == "NIMService":
        image = spec.get("image") or {}
        ref = f"{image.get('repository', '')}:{image.get('tag', '')}"
        state, message = nimservice_state(item)
        text = message
        state_word = str(state).lower()
    else:
        containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
        ref = str(containers[0].get("image", ""))
        ready = int(status.get("readyReplicas") or 0)
        want = int(spec.get("replicas") or 0)
        state_word = "ready" if want and ready >= want else "not-ready"
        text = f"{ready}/{want} ready"
    served = None
    return ContainerStatus(
        name=str(meta.get("name", "")),
        container_id=str(meta.get("uid", "")),
        image=ref,
        state=state_word,
        status=f"{kind} {meta.get('namespace', '')}/{meta.get('name', '')}: {text}",
        host=None,
        port=CONTAINER_PORT,
        served_model_name=served,
        config_hash=(meta.get("labels") or {}).get("nim_async.config_hash"),
    )


class PodFailureMapper:
    """Maps a pull failure's text to :class:`RegistryAuthError` or :class:`ImagePullError`."""

    @staticmethod
    def pull(text: str, detail: str) -> NIMError:
        """The error for a failed pull.

        Args:
            text: The whole message.
            detail: What the registry / kubelet said (decides auth or not).
        """
        from nim_async.deploy.kubernetes.pods import classify_pull_message

        if classify_pull_message(detail) is FailureKind.REGISTRY_AUTH:
            return RegistryAuthError(text, status_code=401)
        return ImagePullError(text)


async def _crash_log(client: KubeClient, pod: str, namespace: str) -> str:
    """The crashed container's last lines: its previous run's log, else the current run's.

    A container restarting fast can leave the kubelet with no log for the run its status
    names as the last one (it answers "unable to retrieve container logs"); the next run,
    crashing the same way, has the same lines. Three looks, half a second apart, at most.
    """
    for look in range(3):
        if look:
            await asyncio.sleep(0.5)
        for previous in (True, False):
            logs = await client.pod_log(pod, namespace, tail=LOG_TAIL, previous=previous)
            if logs.strip():
                return logs
    return ""
