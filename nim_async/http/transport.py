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
import contextvars
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.client_proto import ResponseHandler

__all__ = ["AiohttpTransport"]

_DROP_REQUEST_HEADERS = frozenset({"transfer-encoding", "content-length", "connection"})
_MAX_HEADER_PAIRS = 256
_UNSEEN: Any = object()
_TIMER_CONTEXTS = threading.local()


def timer_context() -> contextvars.Context:
    """An empty ``contextvars.Context`` for this thread's timer callbacks.

    ``loop.call_at`` copies the caller's context for every timer unless given one: a new
    GC-tracked object per timer, kept until the timer runs or the loop drops it, even when
    cancelled. Callbacks that read no context variable (the library's timeout watchdogs) are
    scheduled in this one instead. One per thread: a context cannot be entered twice at once,
    and one thread's loop runs one callback at a time.
    """
    context: contextvars.Context | None = getattr(_TIMER_CONTEXTS, "context", None)
    if context is None:
        context = _TIMER_CONTEXTS.context = contextvars.Context()
    return context


class _AiohttpResponseStream(httpx.AsyncByteStream):
    """The body of an aiohttp response as an httpx byte stream.

    The read timeout is one lazy timer per body, not aiohttp's ``sock_read`` (which cancels and
    schedules a timer on every network read): a read notes when it began waiting, and the
    timer, when it fires, either re-arms for the wait now in progress or, if that wait has
    lasted ``read_timeout`` seconds, fails the read with aiohttp's ``SocketTimeoutError``
    (raised as ``httpx.ReadTimeout``).
    """

    __slots__ = ("_loop", "_read_timeout", "_request", "_response", "_waiting", "_watch")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        read_timeout: float | None = None,
    ) -> None:
        self._response = response
        self._request = request
        self._read_timeout = read_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._waiting: float | None = None  # loop time the current read began, if one is on

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self.read
        while True:
            chunk = await read()
            if not chunk:
                break
            yield chunk

    async def read(self) -> bytes:
        """The next bytes aiohttp has received (as many as are buffered), or ``b""`` at the end.

        Raises:
            httpx.TransportError: the matching httpx exception (``ReadTimeout``, ``ReadError``,
                ``RemoteProtocolError``).
        """
        try:
            if self._read_timeout is None:
                return await self._response.content.readany()
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._waiting = loop.time()
            if self._watch is None:
                self._watch = loop.call_at(
                    self._waiting + self._read_timeout, self._on_watch, context=timer_context()
                )
            try:
                return await self._response.content.readany()
            finally:
                self._waiting = None
        except Exception as exc:
            raise _translate(exc, self._request, reading=True) from exc

    def _on_watch(self) -> None:
        self._watch = None
        since, limit, loop = self._waiting, self._read_timeout, self._loop
        if since is None or limit is None or loop is None:
            return  # no read waiting: the next read arms the timer again
        if loop.time() < since + limit:
            self._watch = loop.call_at(since + limit, self._on_watch, context=timer_context())
            return
        self._response.content.set_exception(
            aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        )

    async def aclose(self) -> None:
        # A fully read body hands its connection back to the pool; a partly read one is closed.
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._response.release()


class _AiohttpResponse(httpx.Response):
    """An ``httpx.Response`` whose ``aiter_raw()`` reads aiohttp's buffers directly.

    httpx's own ``aiter_raw`` passes every chunk through three async generators (its own, the
    client's ``BoundAsyncStream`` and the transport's stream) and a ``ByteChunker``; here a
    chunk is one ``await`` of the body's :meth:`_AiohttpResponseStream.read`. Everything else
    (and ``aiter_raw(chunk_size=...)``) is httpx's.
    """

    _body: _AiohttpResponseStream

    def _direct(self) -> bool:
        # Nothing read yet and the body still the transport's (maybe wrapped by the client).
        stream = self.stream
        body = self._body
        return not (
            self.is_stream_consumed
            or self.is_closed
            or (stream is not body and getattr(stream, "_stream", None) is not body)
        )

    def take_raw(self, *, timed: bool = True) -> Callable[[], Awaitable[bytes]] | None:
        """Take the raw body, to read it with the returned coroutine function.

        Each call of the function returns the next bytes as aiohttp received them, ``b""``
        at the end (close the response then, as ``aiter_raw`` does at its end). It is the
        same read as :meth:`aiter_raw` without an async generator, for a caller that reads
        the body chunk by chunk itself (``ChatResponse``); ``num_bytes_downloaded`` is not
        counted on this path.

        Args:
            timed: ``False``: the reads are not timed by the request's read timeout (no
                timer for this body), for a caller whose own watchdog bounds every wait at
                least as tightly.

        Returns:
            The read function, or ``None`` when the body was already read or closed (then
            use ``aiter_raw``, which raises what httpx raises).
        """
        if not self._direct():
            return None
        self.is_stream_consumed = True
        body = self._body
        if not timed:
            body._read_timeout = None
        return body.read

    async def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """A byte iterator over the raw body, each chunk as aiohttp received it."""
        if chunk_size is not None or not self._direct():
            async for chunk in super().aiter_raw(chunk_size):
                yield chunk
            return
        self.is_stream_consumed = True
        self._num_bytes_downloaded = 0
        read = self._body.read
        while True:
            chunk = await read()
            if not chunk:
                break
            self._num_bytes_downloaded += len(chunk)
            yield chunk
        await self.aclose()

    async def aclose(self) -> None:
        """Close the response and release (or drop) its connection."""
        await super().aclose()
        # httpx's client wrapped the body in a stream that points back at this response: a
        # reference cycle, which would leave the response, its request and body for the
        # cyclic garbage collector (~40 objects per request). Once closed, the wrapper has
        # done its work (it set ``elapsed``); unwrapping frees all of it by reference count.
        if self.is_closed:
            self.stream = self._body


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
        self._header_pairs: dict[tuple[bytes, bytes], tuple[str, str] | None] = {}
        self._last_url: httpx.URL | None = None
        self._last_target = yarl.URL()
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
        headers = self._headers(request.headers.raw)
        body = await request.aread()
        url = request.url
        if url is self._last_url:
            target = self._last_target
        else:
            target = yarl.URL(str(url), encoded=True)
            self._last_url, self._last_target = url, target
        timeout = self._timeout(request)
        try:
            response = await session.request(
                request.method,
                target,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _translate(exc, request, reading=False) from exc
        # aiohttp's sock_read covered the wait for the headers; the body's reads are timed by
        # the stream's own lazy timer instead of a timer moved on every network read.
        read_timeout = timeout.sock_read
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        if read_timeout is not None and isinstance(protocol, ResponseHandler):
            protocol.read_timeout = None
            # and the timer the last network read (the headers') scheduled is dropped now,
            # not left to bound the first wait for the body
            protocol.start_timeout()
        stream = _AiohttpResponseStream(response, request, read_timeout)
        result = _AiohttpResponse(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=stream,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
            request=request,
        )
        result._body = stream
        return result

    def _headers(self, raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        # The same few request headers come every time: each raw pair's conversion (or its
        # being dropped) is remembered, bounded.
        known = self._header_pairs
        headers = []
        for pair in raw:
            converted = known.get(pair, _UNSEEN)
            if converted is _UNSEEN:
                name, value = pair
                text = name.decode("latin-1")
                converted = (
                    None
                    if text.lower() in _DROP_REQUEST_HEADERS
                    else (text, value.decode("latin-1"))
                )
                if len(known) >= _MAX_HEADER_PAIRS:
                    known.clear()
                known[pair] = converted
            if converted is not None:
                headers.append(converted)
        return headers

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
