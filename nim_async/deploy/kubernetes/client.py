"""The one place ``kubernetes_asyncio`` is used: a small adapter speaking plain dicts.

:class:`KubeClient` loads a kubeconfig (or the in-cluster service account), and offers what the
backend needs: create-or-patch, read, delete and list by label for Secrets, Services,
Deployments, Pods and NIMService custom objects; a watch that starts with the current list (so
that nothing happens between "look" and "watch"); pod logs; and a port-forward
(:class:`PortForward`) over the API server's websocket ``portforward`` subresource.

Every error of the client library is translated here, once: :class:`ApiException` and
connection failures become :class:`nim_async.errors.APIError` (with the HTTP status when there
is one) and a missing or broken kubeconfig :class:`nim_async.errors.InvalidConfigError`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.stream import WsApiClient

from nim_async.deploy.kubernetes.manifests import (
    NIMSERVICE_GROUP,
    NIMSERVICE_PLURAL,
    NIMSERVICE_VERSION,
)
from nim_async.errors import APIError, InvalidConfigError

__all__ = ["KINDS", "KubeClient", "PortForward", "is_not_found"]

KINDS = ("Secret", "Service", "Deployment", "ReplicaSet", "Pod", "NIMService")
APPS_KINDS = ("Deployment", "ReplicaSet")
"""The kinds :class:`KubeClient` handles."""
NIMSERVICE_CRD = f"{NIMSERVICE_PLURAL}.{NIMSERVICE_GROUP}"
NO_LOG_ANSWER = "unable to retrieve container logs"
"""How the kubelet's log answer starts when it has no log for that run (seen on 1.20)."""


def is_not_found(exc: APIError) -> bool:
    """Whether a translated error was the API server's 404.

    Args:
        exc: The error.
    """
    return exc.status_code == 404


def _is_connection_error(exc: BaseException) -> bool:
    # aiohttp's errors (the library's transport) without importing aiohttp here
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("aiohttp")


def _reason(exc: ApiException) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or "no reason given")


class KubeClient:
    """An async Kubernetes API client for the NIM backend (use as ``async with``).

    Args:
        kubeconfig: Path of the kubeconfig; ``None`` uses ``$KUBECONFIG`` / ``~/.kube/config``,
            and inside a pod the service account.
        context: The kubeconfig context; ``None`` uses the current one.
    """

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self._configuration: Any = None
        self._api: Any = None
        self.server: str = ""

    async def __aenter__(self) -> Self:
        configuration = k8s.Configuration()
        path = self._kubeconfig or os.environ.get("KUBECONFIG")
        try:
            if path or self._context or "KUBERNETES_SERVICE_HOST" not in os.environ:
                await k8s_config.load_kube_config(
                    config_file=path, context=self._context, client_configuration=configuration
                )
            else:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            where = path or "~/.kube/config"
            raise InvalidConfigError(
                f"cannot use the kubeconfig {where}"
                f"{f' (context {self._context!r})' if self._context else ''}: {exc}",
                field="kubeconfig",
            ) from None
        self._configuration = configuration
        self.server = str(configuration.host)
        self._api = k8s.ApiClient(configuration=configuration)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    # ------------------------------------------------------------------ helpers

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            result = await call
        except ApiException as exc:
            raise APIError(
                f"Kubernetes API ({self.server}): {what} failed: {exc.status} {_reason(exc)}",
                status_code=exc.status,
            ) from None
        except Exception as exc:
            if _is_connection_error(exc):
                raise APIError(
                    f"cannot reach the Kubernetes API server at {self.server} ({what}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise
        return result

    def _plain(self, obj: Any) -> Any:
        return self._api.sanitize_for_serialization(obj)

    def _core(self) -> Any:
        return k8s.CoreV1Api(self._api)

    def _apps(self) -> Any:
        return k8s.AppsV1Api(self._api)

    def _custom(self) -> Any:
        return k8s.CustomObjectsApi(self._api)

    def _method(self, verb: str, kind: str) -> Callable[..., Awaitable[Any]]:
        if kind == "NIMService":
            custom = self._custom()
            names = {
                "create": "create_namespaced_custom_object",
                "read": "get_namespaced_custom_object",
                "patch": "patch_namespaced_custom_object",
                "delete": "delete_namespaced_custom_object",
                "list": "list_namespaced_custom_object",
            }
            method = getattr(custom, names[verb])

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await method(
                    NIMSERVICE_GROUP,
                    NIMSERVICE_VERSION,
                    kwargs.pop("namespace"),
                    NIMSERVICE_PLURAL,
                    *args,
                    **kwargs,
                )

            return call
        api = self._apps() if kind in APPS_KINDS else self._core()
        snake = {
            "Secret": "secret",
            "Service": "service",
            "Deployment": "deployment",
            "ReplicaSet": "replica_set",
            "Pod": "pod",
        }[kind]
        method = getattr(api, f"{verb}_namespaced_{snake}")

        async def typed(*args: Any, **kwargs: Any) -> Any:
            return await method(*args, **kwargs)

        return typed

    # ------------------------------------------------------------------ objects

    async def crd_installed(self) -> bool:
        """Whether the NIM Operator's NIMService CRD is installed (and served)."""
        api = k8s.ApiextensionsV1Api(self._api)
        try:
            await self._call(
                "reading the NIMService CRD", api.read_custom_resource_definition(NIMSERVICE_CRD)
            )
        except APIError as exc:
            if exc.status_code in (403, 404):
                return False
            raise
        return True

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create ``body``, or merge-patch the existing object of that name.

        Args:
            body: A full object (``kind``, ``metadata.name`` and ``metadata.namespace`` set).

        Returns:
            The object as the API server stored it.
        """
        kind = str(body["kind"])
        meta = body["metadata"]
        name, namespace = str(meta["name"]), str(meta["namespace"])
        try:
            created = await self._call(
                f"creating {kind} {namespace}/{name}",
                self._method("create", kind)(body=body, namespace=namespace),
            )
        except APIError as exc:
            if exc.status_code != 409:
                raise
            patched = await self._call(
                f"updating {kind} {namespace}/{name}",
                self._method("patch", kind)(
                    name,
                    body=body,
                    namespace=namespace,
                    _content_type="application/merge-patch+json",
                ),
            )
            return dict(self._plain(patched))
        return dict(self._plain(created))

    async def read(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """One object, or ``None`` if there is none.

        Args:
            kind: One of :data:`KINDS`.
            name: Object name.
            namespace: Its namespace.
        """
        try:
            obj = await self._call(
                f"reading {kind} {namespace}/{name}",
                self._method("read", kind)(name, namespace=namespace),
            )
        except APIError as exc:
            if is_not_found(exc):
                return None
            raise
        return dict(self._plain(obj))

    async def delete(
        self, kind: str, name: str, namespace: str, *, grace_seconds: int | None = None
    ) -> bool:
        """Delete one object (the garbage collector removes its dependents); ``False`` if none.

        Args:
            kind: One of :data:`KINDS`.
            name: Object name.
            namespace: Its namespace.
            grace_seconds: The pod's termination grace period instead of its own (``0``: the
                API server removes the object at once and the kubelet kills what is left).
        """
        options: dict[str, Any] = {"propagation_policy": "Background"}
        if grace_seconds is not None:
            options["grace_period_seconds"] = grace_seconds
        try:
            await self._call(
                f"deleting {kind} {namespace}/{name}",
                self._method("delete", kind)(name, namespace=namespace, **options),
            )
        except APIError as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    async def list(
        self, kind: str, namespace: str, label_selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """The objects of ``kind`` matching ``label_selector``, and the list's resourceVersion.

        Args:
            kind: One of :data:`KINDS`.
            namespace: The namespace.
            label_selector: A label selector (``a=b,c=d``).
        """
        result = await self._call(
            f"listing {kind} in {namespace}",
            self._method("list", kind)(namespace=namespace, label_selector=label_selector),
        )
        plain = self._plain(result)
        items = [dict(item) for item in plain.get("items") or []]
        return items, str((plain.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self, kind: str, namespace: str, *, label_selector: str = "", field_selector: str = ""
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """``(event type, object)`` pairs: first ``ADDED`` for each current object, then changes.

        Runs until the caller stops iterating (wrap it in a timeout); reconnects as needed.

        Args:
            kind: One of :data:`KINDS`.
            namespace: The namespace.
            label_selector: A label selector.
            field_selector: A field selector (``metadata.name=x``).
        """
        selectors = {"label_selector": label_selector, "field_selector": field_selector}
        initial = await self._call(
            f"listing {kind} in {namespace}",
            self._method("list", kind)(namespace=namespace, **selectors),
        )
        plain = self._plain(initial)
        for item in plain.get("items") or []:
            yield "ADDED", dict(item)
        version = str((plain.get("metadata") or {}).get("resourceVersion") or "")
        watcher = k8s_watch.Watch(return_type="object")
        func, args = self._list_function(kind, namespace)
        stream = watcher.stream(func, *args, resource_version=version, **selectors)
        try:
            while True:
                try:
                    event = await self._call(f"watching {kind} in {namespace}", stream.next())
                except StopAsyncIteration:
                    return
                raw = event.get("raw_object") if isinstance(event, dict) else None
                if event.get("type") == "ERROR" or not isinstance(raw, dict):
                    continue
                yield str(event.get("type", "")), raw
        finally:
            with contextlib.suppress(Exception):
                await watcher.close()

    def _list_function(self, kind: str, namespace: str) -> tuple[Any, tuple[Any, ...]]:
        if kind == "NIMService":
            return self._custom().list_namespaced_custom_object, (
                NIMSERVICE_GROUP,
                NIMSERVICE_VERSION,
                namespace,
                NIMSERVICE_PLURAL,
            )
        api = self._apps() if kind in APPS_KINDS else self._core()
        snake = "replica_set" if kind == "ReplicaSet" else kind.lower()
        return getattr(api, f"list_namespaced_{snake}"), (namespace,)

    async def pod_log(self, name: str, namespace: str, *, tail: int, previous: bool) -> str:
        """The last ``tail`` lines of a pod's (previous) container log; ``""`` if unavailable.

        Args:
            name: Pod name.
            namespace: Its namespace.
            tail: How many lines.
            previous: The log of the container's previous run (after a crash).
        """
        try:
            text = await self._call(
                f"reading the log of pod {namespace}/{name}",
                self._core().read_namespaced_pod_log(
                    name, namespace, tail_lines=tail, previous=previous
                ),
            )
        except APIError:
            return ""
        text = str(text or "")
        # the kubelet's answer (status 200) when that run's log is gone or not there yet
        return "" if text.startswith(NO_LOG_ANSWER) else text

    async def events_for(self, name: str, namespace: str) -> builtins.list[dict[str, Any]]:
        """The events about object ``name`` (newest last).

        Args:
            name: Object name.
            namespace: Its namespace.
        """
        result = await self._call(
            f"listing the events of {namespace}/{name}",
            self._core().list_namespaced_event(
                namespace, field_selector=f"involvedObject.name={name}"
            ),
        )
        return [dict(item) for item in self._plain(result).get("items") or []]

    def port_forward(
        self, pod: str, namespace: str, remote_port: int, *, local_port: int = 0
    ) -> PortForward:
        """A port-forward from ``127.0.0.1:local_port`` to ``pod:remote_port`` (not yet open).

        Args:
            pod: Pod name.
            namespace: Its namespace.
            remote_port: The pod's port.
            local_port: The local port (0: a free one).
        """
        return PortForward(self._configuration, pod, namespace, remote_port, local_port)


class PortForward:
    """``127.0.0.1:<local_port>`` forwarded to a pod's port through the API server.

    Each accepted connection opens one websocket to the pod's ``portforward`` subresource
    (channel 0 data, channel 1 errors). Use as ``async with`` or :meth:`start` / :meth:`close`.

    Args:
        configuration: The client configuration (server, credentials).
        pod: Pod name.
        namespace: Its namespace.
        remote_port: The pod's port.
        local_port: The local port (0: a free one, see :attr:`local_port` after start).
    """

    def __init__(
        self, configuration: Any, pod: str, namespace: str, remote_port: int, local_port: int
    ) -> None:
        self._configuration = configuration
        self.pod = pod
        self.namespace = namespace
        self.remote_port = remote_port
        self.local_port = local_port
        self._server: asyncio.Server | None = None
        self._ws_api: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<local_port>``."""
        return f"http://127.0.0.1:{self.local_port}"

    async def start(self) -> None:
        """Listen on ``127.0.0.1:local_port``.

        Raises:
            APIError: If the local port cannot be bound.
        """
        self._ws_api = WsApiClient(configuration=self._configuration)
        try:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.local_port)
        except OSError as exc:
            await self._ws_api.close()
            raise APIError(f"cannot listen on 127.0.0.1:{self.local_port}: {exc}") from exc
        self.local_port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every forwarded connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        api, self._ws_api = self._ws_api, None
        if api is not None:
            await api.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        except Exception:  # a broken forward ends that one connection only
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = k8s.CoreV1Api(self._ws_api)
        connect: Any = await core.connect_get_namespaced_pod_portforward(
            self.pod, self.namespace, ports=self.remote_port, _preload_content=False
        )
        async with connect as ws:
            seen_header = {0: False, 1: False}

            async def upstream() -> None:
                while data := await reader.read(65536):
                    await ws.send_bytes(b"\x00" + data)
                await ws.close()  # the local side closed: end the forward

            up = asyncio.create_task(upstream())
            try:
                async for message in ws:
                    payload = message.data
                    if isinstance(payload, str):
                        payload = payload.encode()
                    if not isinstance(payload, bytes | bytearray) or not payload:
                        continue
                    channel, data = payload[0], bytes(payload[1:])
                    if channel in seen_header and not seen_header[channel]:
                        seen_header[channel] = True  # the first frame: the port number
                        data = data[2:]
                    if not data:
                        continue
                    if channel == 0:
                        writer.write(data)
                        await writer.drain()
                    elif channel == 1:
                        break  # the kubelet reports an error on this forward
            finally:
                up.cancel()
                with contextlib.suppress(BaseException):
                    await up
