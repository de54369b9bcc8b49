"""The thin adapter over ``aiodocker``: the only module of ``nim_async`` that imports it.

Every Docker engine call the deployer and the emulator-image builder make goes through
:class:`DockerClient`, which translates ``aiodocker`` / ``aiohttp`` failures into
:mod:`nim_async.errors` types at the point where they enter (``raise X(...) from exc``,
:mod:`nim_async.deploy.docker.errors`):

* daemon not reachable → :class:`~nim_async.errors.DockerUnavailableError` (naming ``DOCKER_HOST``)
* registry refused the credentials → :class:`~nim_async.errors.RegistryAuthError`
* error objects inside the 200 pull stream → :class:`~nim_async.errors.ImagePullError`
* ``could not select device driver`` → :class:`~nim_async.errors.GPURuntimeError`
* ``port is already allocated`` / ``address already in use`` →
  :class:`~nim_async.errors.PortInUseError`
* container name conflict → :class:`~nim_async.errors.ContainerExistsError`
* anything else → :class:`~nim_async.errors.APIError` with the engine's HTTP status

Registry passwords given to this module are scrubbed from every message it raises.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import IO, Any, Self

import aiodocker
import aiohttp
import orjson

from nim_async.deploy.docker.errors import DEFAULT_DOCKER_HOST, docker_host, translate, unavailable
from nim_async.deploy.docker.registry import RegistryAuth, split_ref
from nim_async.errors import APIError, ImagePullError, RegistryAuthError
from nim_async.protocol.scrub import Scrubber

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "DockerClient",
    "RegistryAuth",
    "docker_host",
]


class DockerClient:
    """An async Docker engine client whose errors are :mod:`nim_async.errors` types.

    No connection is made until :meth:`connect` (or ``async with``).

    Args:
        url: Engine URL; ``None`` uses ``DOCKER_HOST`` or the default socket.
        secrets: Strings scrubbed from every error message (registry passwords).
    """

    def __init__(self, url: str | None = None, *, secrets: tuple[str, ...] = ()) -> None:
        self._url = url
        self._docker: aiodocker.Docker | None = None
        self._scrub = Scrubber(secrets)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def _api(self) -> aiodocker.Docker:
        if self._docker is None:
            raise RuntimeError("DockerClient is not connected; use `async with DockerClient()`")
        return self._docker

    def add_secret(self, secret: str) -> None:
        """Scrub ``secret`` from every later error message too.

        Args:
            secret: The text to hide.
        """
        self._scrub.add(secret)

    @contextmanager
    def _errors(
        self,
        action: str,
        *,
        default: type[APIError] = APIError,
        port: int | None = None,
        name: str | None = None,
        registry: str | None = None,
    ) -> Iterator[None]:
        try:
            yield
        except (aiodocker.DockerError, aiohttp.ClientError, ConnectionError) as exc:
            raise translate(
                exc,
                action,
                self._scrub,
                default=default,
                port=port,
                name=name,
                registry=registry,
            ) from exc

    @asynccontextmanager
    async def _request(
        self,
        path: str,
        method: str = "GET",
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A raw engine request whose response is always closed, even when cancelled.

        (aiodocker leaves a streaming response open when its consumer stops early.)
        """
        async with self._api._query(
            path,
            method,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            try:
                yield response
            finally:
                response.close()

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Open the connection and check that the engine answers.

        Raises:
            DockerUnavailableError: If the daemon cannot be reached.
        """
        if self._docker is not None:
            return
        try:
            self._docker = aiodocker.Docker(url=self._url)
        except (ValueError, OSError, aiodocker.DockerError) as exc:
            raise unavailable(str(exc)) from exc
        try:
            await self.version()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        docker, self._docker = self._docker, None
        if docker is not None:
            await docker.close()

    async def version(self) -> dict[str, Any]:
        """Return the engine's version document.

        Raises:
            DockerUnavailableError: If the daemon cannot be reached.
        """
        with self._errors("query the engine version"):
            result: dict[str, Any] = await self._api.version()
            return result

    # ------------------------------------------------------------------ registry / images

    async def login(self, auth: RegistryAuth) -> None:
        """Check credentials against the registry (``POST /auth``), as ``docker login`` does.

        Args:
            auth: The credentials.

        Raises:
            RegistryAuthError: If the registry refuses them.
            ImagePullError: If the registry cannot be reached (refused, no such host, TLS,
                timeout), saying so.
        """
        self.add_secret(auth.password.get_secret_value())
        with self._errors(
            f"log in to {auth.server}", default=RegistryAuthError, registry=auth.server
        ):
            await self._api.auth(**auth.as_dict())

    async def image_exists(self, ref: str) -> bool:
        """Whether the image ``ref`` is present locally.

        Args:
            ref: Image reference.
        """
        try:
            with self._errors(f"inspect image {ref}"):
                await self._api.images.inspect(ref)
        except APIError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    async def pull(
        self, ref: str, auth: RegistryAuth | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Pull ``ref`` and yield the engine's progress objects.

        Error objects inside the 200 stream are raised, not yielded.

        Args:
            ref: Image reference with a tag (``registry/name:tag``).
            auth: Registry credentials, sent as ``X-Registry-Auth``.

        Yields:
            Progress objects (``status``, ``id``, ``progressDetail``).

        Raises:
            RegistryAuthError: If the registry refuses the credentials.
            ImagePullError: If the pull fails.
        """
        name, tag = split_ref(ref)
        headers = {}
        if auth is not None:
            self.add_secret(auth.password.get_secret_value())
            headers["X-Registry-Auth"] = auth.header()
        with self._errors(f"pull {ref}", default=ImagePullError):
            async with self._request(
                "images/create", "POST", params={"fromImage": name, "tag": tag}, headers=headers
            ) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    item: dict[str, Any] = orjson.loads(line)
                    if "error" in item or "errorDetail" in item:
                        detail = item.get("errorDetail") or {}
                        message = detail.get("message") or item.get("error") or "unknown error"
                        raise aiodocker.DockerError(0, str(message))
                    yield item

    async def push(self, ref: str, auth: RegistryAuth | None = None) -> None:
        """Push ``ref`` to its registry.

        Args:
            ref: Image reference with a tag.
            auth: Registry credentials.

        Raises:
            RegistryAuthError: If the registry refuses the credentials.
            APIError: If the push fails.
        """
        if auth is not None:
            self.add_secret(auth.password.get_secret_value())
        with self._errors(f"push {ref}"):
            name, tag = split_ref(ref)
            async for _ in self._api.images.push(
                name, tag=tag, auth=auth.as_dict() if auth is not None else None, stream=True
            ):
                pass

    async def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Delete a local image.

        Args:
            ref: Image reference or id.
            force: Remove even when containers use it.

        Returns:
            ``True`` if it was removed, ``False`` if it was not present.
        """
        try:
            with self._errors(f"remove image {ref}"):
                await self._api.images.delete(ref, force=force)
        except APIError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    async def build_image(
        self, context: IO[bytes], tag: str, *, labels: Mapping[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Build an image from an uncompressed tar build context.

        Args:
            context: A readable binary file holding the tar context (with a ``Dockerfile``).
            tag: The reference to tag the image with.
            labels: Image labels.

        Yields:
            The engine's build progress objects.

        Raises:
            APIError: If the build fails.
        """
        with self._errors(f"build image {tag}"):
            stream = self._api.images.build(
                fileobj=context,
                tag=tag,
                encoding="identity",
                labels=dict(labels) if labels else None,
                rm=True,
                forcerm=True,
                stream=True,
            )
            async for item in stream:
                yield item

    async def list_images(
        self, *, label: str | None = None, all: bool = False
    ) -> list[dict[str, Any]]:
        """List local images (``docker images``), optionally only those carrying ``label``.

        Args:
            label: A label key (or ``key=value``) the images must carry.
            all: Include intermediate images.

        Returns:
            The engine's image summaries.
        """
        with self._errors("list images"):
            result: list[dict[str, Any]] = await self._api.images.list(
                filters={"label": [label]} if label else None, all=all
            )
        return result

    async def image_info(self, ref: str) -> dict[str, Any]:
        """Return ``docker image inspect`` for ``ref``.

        Args:
            ref: Image reference or id.
        """
        with self._errors(f"inspect image {ref}"):
            result: dict[str, Any] = await self._api.images.inspect(ref)
            return result

    # ------------------------------------------------------------------ containers

    async def inspect_container(self, name_or_id: str) -> dict[str, Any] | None:
        """Return ``docker inspect`` of a container, or ``None`` if there is none.

        Args:
            name_or_id: Container name or id.
        """
        try:
            with self._errors(f"inspect container {name_or_id}"):
                container = await self._api.containers.get(name_or_id)
        except APIError as exc:
            if exc.status_code == 404:
                return None
            raise
        info: dict[str, Any] = container._container
        return info

    async def create_container(self, name: str, config: dict[str, Any]) -> str:
        """Create (not start) a container.

        Args:
            name: Container name.
            config: The engine's container-create body.

        Returns:
            The new container's id.

        Raises:
            ContainerExistsError: If the name is taken.
            APIError: For other failures.
        """
        with self._errors(f"create container {name}", name=name):
            container = await self._api.containers.create(config, name=name)
            return str(container.id)

    async def start_container(self, container_id: str, *, port: int | None = None) -> None:
        """Start a created container.

        Args:
            container_id: Container id.
            port: The published host port, to name it when it is taken.

        Raises:
            GPURuntimeError: If the host has no GPU runtime for the GPU request.
            PortInUseError: If the host port is taken.
            APIError: For other failures.
        """
        with self._errors("start the container", port=port):
            await self._api.containers.container(container_id).start()

    async def wait_container(self, container_id: str) -> int:
        """Block until the container is not running and return its exit code.

        Args:
            container_id: Container id.
        """
        with self._errors("wait for the container"):
            async with self._request(
                f"containers/{container_id}/wait", "POST", params={"condition": "not-running"}
            ) as response:
                result = await response.json(content_type=None)
        return int(result.get("StatusCode", -1))

    async def container_logs(self, container_id: str, *, tail: int = 50) -> list[str]:
        """Return the last ``tail`` lines of the container's stdout and stderr.

        Args:
            container_id: Container id.
            tail: Number of lines.
        """
        with self._errors("read the container logs"):
            pieces = await self._api.containers.container(container_id).log(
                stdout=True, stderr=True, tail=tail
            )
        return "".join(pieces).splitlines()[-tail:]

    async def follow_logs(self, container_id: str) -> AsyncGenerator[str, None]:
        """Yield the container's log lines as they are written (stdout and stderr).

        The container must not use a TTY (the deployer never asks for one).

        Args:
            container_id: Container id.

        Yields:
            One log line at a time, without the line break.
        """
        buffer = b""
        with self._errors("follow the container logs"):
            async with self._request(
                f"containers/{container_id}/logs",
                params={"stdout": "1", "stderr": "1", "follow": "1"},
            ) as response:
                while True:
                    try:
                        header = await response.content.readexactly(8)
                        _, length = struct.unpack(">BxxxL", header)
                        buffer += await response.content.readexactly(length)
                    except asyncio.IncompleteReadError:
                        break
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace").rstrip("\r")
        if buffer:
            yield buffer.decode("utf-8", "replace")

    async def stop_container(self, container_id: str, *, grace: float = 10.0) -> None:
        """Send SIGTERM, then SIGKILL after ``grace`` seconds (``docker stop``).

        Args:
            container_id: Container id.
            grace: Seconds between SIGTERM and SIGKILL.
        """
        try:
            with self._errors("stop the container"):
                await self._api.containers.container(container_id).stop(t=max(0, round(grace)))
        except APIError as exc:
            if exc.status_code not in (304, 404):
                raise

    async def remove_container(self, container_id: str, *, force: bool = True) -> bool:
        """Remove a container (killing it first when ``force``).

        Args:
            container_id: Container name or id.
            force: Kill it if it runs.

        Returns:
            ``True`` if removed, ``False`` if there was no such container.
        """
        try:
            with self._errors("remove the container"):
                await self._api.containers.container(container_id).delete(force=force)
        except APIError as exc:
            if exc.status_code == 404:
                return False
            if exc.status_code == 409 and "already in progress" in str(exc):
                return True
            raise
        return True

    async def list_containers(
        self, *, labels: Mapping[str, str] | None = None, all: bool = True
    ) -> list[dict[str, Any]]:
        """List containers (``docker ps``) filtered by labels.

        Args:
            labels: ``key: value`` labels a container must carry (value ``""``: any value).
            all: Include stopped containers.

        Returns:
            The engine's container summaries.
        """
        filters = [f"{k}={v}" if v else k for k, v in (labels or {}).items()]
        params: dict[str, Any] = {"all": all}
        if filters:
            params["filters"] = orjson.dumps({"label": filters}).decode()
        with self._errors("list containers"):
            containers = await self._api.containers.list(**params)
        return [dict(c._container) for c in containers]
