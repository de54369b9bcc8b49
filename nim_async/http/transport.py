"""An httpx transport that sends requests over aiohttp.

The library is written against the httpx API, but httpx's own connection pool (httpcore) slows
down sharply under many concurrent streaming requests (encode/httpx#3215). :class:`AiohttpTransport`
keeps the httpx API and hands the wire work to an :class:`aiohttp.ClientSession` whose
``TCPConnector`` is sized to the intended concurrency::

    transport = AiohttpTransport(max_connections=256)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("POST", url, content=body) as response:
            async for chunk in response.aiter_raw():
                ...

Response bodies are streamed chunk by chunk as aiohttp receives them. A body read to the end
returns its connection to the pool; a body closed early closes its connection. aiohttp errors are
translated into the matching httpx exceptions, so code that handles httpx errors (such as the
predictor's translation into :mod:`nim_async.errors`) works unchanged. Response bodies are not
decompressed by aiohttp; httpx decodes ``Content-Encoding`` itself, as with its own transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport"]

_DROP_REQUEST_HEADERS = frozenset({"transfer-encoding", "content-length", "connection"})


class _AiohttpResponseStream(httpx.AsyncByteStream):
    """The body of an aiohttp response as an httpx byte stream."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk
        except Exception as exc:
            raise _translate(exc, self._request, reading=True) from exc

    async def aclose(self) -> None:
        # A fully read body hands its connection back to the pool; a partly read one is closed.
        self._response.release()


def _translate(exc: BaseException, request: httpx.Request, *, reading: bool) -> Exception:
    """Return the httpx exception that matches an aiohttp (or OS) exception."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.InvalidUrlClientError | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        if reading:
            return httpx.ReadError(message, request=request)
        return httpx.ConnectError(message, request=request)
    return httpx.TransportError(message, request=request)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` backed by an :class:`aiohttp.ClientSession`.

    The session is created lazily, on the event loop of the first request, and closed by
    :meth:`aclose` (which ``httpx.AsyncClient.aclose`` calls).

    Args:
        max_connections: Size of the connection pool (aiohttp ``TCPConnector(limit=...)``);
            set it to the intended concurrency. Requests beyond it wait for a free connection.
        keepalive_expiry: Seconds an idle pooled connection is kept open.
        trust_env: Read proxy settings from the environment, as aiohttp does.

    Attributes:
        connections_opened: How many TCP connections the transport has opened so far (for
            checking that a warmed-up pool opens no new ones).
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 60.0,
        trust_env: bool = False,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.trust_env = trust_env
        self.connections_opened = 0
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"AiohttpTransport(max_connections={self.max_connections}, "
            f"connections_opened={self.connections_opened})"
        )

    def _socket_factory(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        self.connections_opened += 1
        return sock

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            if self._closed:
                raise RuntimeError("the transport is closed")
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                socket_factory=self._socket_factory,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=self.trust_env,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )
            self._session = session
        return session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        spec: dict[str, float | None] = request.extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=None if pool is None or connect is None else pool + connect,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` over aiohttp and return a response whose body streams.

        Args:
            request: The httpx request. Its body is read into memory before sending.

        Returns:
            An :class:`httpx.Response` with a streaming body.

        Raises:
            httpx.TransportError: the httpx exception matching the aiohttp failure
                (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``ReadError``,
                ``RemoteProtocolError``, ``UnsupportedProtocol``).
        """
        session = self._get_session()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _DROP_REQUEST_HEADERS
        ]
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _translate(exc, request, reading=False) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpResponseStream(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
            request=request,
        )

    def abandon(self) -> None:
        """Forget the session of a closed event loop, without warnings.

        The next request starts a new session on the running loop.
        """
        session, self._session = self._session, None
        if session is None:
            return
        connector = session.connector
        session.detach()  # the session counts as closed: no "Unclosed client session"
        if connector is not None:
            for protos in list(connector._conns.values()):
                for proto, _ in protos:
                    sock = getattr(proto.transport, "_sock", None)  # the loop cannot close it
                    if isinstance(sock, socket.socket):
                        with contextlib.suppress(OSError):
                            sock.close()
            connector._conns.clear()
            connector._closed = True

    async def aclose(self) -> None:
        """Close the aiohttp session and every pooled connection."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
