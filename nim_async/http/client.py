"""A small client for a NIM or vLLM server: chat requests, health, models, version, downloads.

The predictor, the deployer's readiness probe and ``nim-async bench`` all talk to servers through
:class:`ServerClient`; httpx stays inside ``nim_async.http`` and its errors are translated by
:mod:`nim_async.http.errors` (transport failures) and :mod:`nim_async.protocol.status` (HTTP error
answers).

Readiness: NIM serves ``/v1/health/ready``; vLLM serves ``/health`` (the NIM paths are 404 there).
:meth:`ServerClient.health_ready` asks the NIM path and falls back to ``/health`` when the server
does not know it, remembering which path the server has.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import httpx
import orjson

from nim_async.errors import (
    MediaError,
    NIMPredictionError,
    ResponseTooLargeError,
    ServerError,
)
from nim_async.http.errors import translate
from nim_async.http.transport import AiohttpTransport
from nim_async.protocol.status import error_for_status, retry_after_seconds
from nim_async.protocol.wire import ServerInfo

__all__ = [
    "CHAT_PATH",
    "HEALTH_PATHS",
    "MAX_DOWNLOAD_BYTES",
    "MAX_RESPONSE_BYTES",
    "ChatResponse",
    "ServerClient",
    "Transport",
]

Transport = httpx.AsyncBaseTransport
"""The transport type a :class:`ServerClient` (and the predictor) accepts."""

CHAT_PATH = "/v1/chat/completions"
HEALTH_PATHS = ("/v1/health/ready", "/health")
"""Readiness endpoints: NIM's, then vLLM's."""

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""The largest image download accepted (bytes)."""

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The largest non-streamed answer body read by default (bytes; a chat answer is ~1 KB)."""


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that stores nothing: no cookie is kept or sent."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Ignore the response's cookies."""

    def add_cookie_header(self, request: Any) -> None:
        """Add no cookie header."""


def _ignore_cookies(response: httpx.Response) -> None:
    """Take no cookies from ``response`` (the client keeps none: see :class:`_NoCookies`)."""


class ChatResponse:
    """The answer to a chat request, its body not read yet (close it with :meth:`aclose`).

    Attributes:
        status_code: The HTTP status (below 400: errors are raised by :meth:`ServerClient.post`).
        on_end: ``None``, or a function called once when the answer ends: with the error when
            the connection broke (or timed out) while reading, else with ``None`` when it is
            closed or read to its end. The endpoint pool of a predictor with several servers
            (:mod:`nim_async.predict.endpoints`) counts outstanding requests and notices
            dropped streams with it.
    """

    __slots__ = (
        "_base_url",
        "_chunks",
        "_read",
        "_response",
        "_timed",
        "_timeout",
        "on_end",
        "status_code",
    )

    def __init__(self, response: httpx.Response, base_url: str, timeout: float) -> None:
        self._response = response
        self._base_url = base_url
        self._timeout = timeout
        self.status_code = response.status_code
        self.on_end: Callable[[NIMPredictionError | None], object] | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._read: Callable[[], Awaitable[bytes]] | None = None
        self._timed = True

    def watched(self, idle_timeout: float | None) -> None:
        """Say that the caller bounds each wait for the body itself (before the first read).

        A caller with its own watchdog (the predictor's stream: at most ``idle_timeout``
        seconds between data events) makes the client's per-read timer redundant when that
        limit is no longer than the client's timeout: the wait it would fail has failed
        already. The default transport then arms no read timer for this body; with a larger
        or no limit nothing changes.
        """
        if idle_timeout is not None and idle_timeout <= self._timeout:
            self._timed = False

    def _start_reading(self) -> Callable[[], Awaitable[bytes]] | None:
        # On the first read: the default transport's body is read by one await per chunk,
        # with no async generator in between; any other response (another transport, a
        # Content-Encoding httpx decodes) through httpx's iterators.
        if self._chunks is None:
            response = self._response
            encoded = "content-encoding" in response.headers
            take_raw = getattr(response, "take_raw", None)  # AiohttpTransport's responses
            read: Callable[[], Awaitable[bytes]] | None = None
            if take_raw is not None and not encoded:
                read = take_raw(timed=self._timed)
            if read is not None:
                self._read = read
                return read
            self._chunks = response.aiter_bytes() if encoded else response.aiter_raw()
        return None

    def _ended(self, error: NIMPredictionError | None) -> None:
        hook, self.on_end = self.on_end, None
        if hook is not None:
            hook(error)

    def _broken(self, exc: httpx.HTTPError, what: str = "the request") -> NIMPredictionError:
        error = translate(
            exc, base_url=self._base_url, phase="read", timeout=self._timeout, what=what
        )
        if self.on_end is not None:
            error.__cause__ = exc
            self._ended(error)
        return error

    async def read(self, max_bytes: int | None = None) -> bytes:
        """Read the whole body and close the response.

        Args:
            max_bytes: The largest body accepted (``None``: no cap). A ``Content-Length`` above
                it fails before anything is read; a body that grows past it fails at once.

        Raises:
            PredictionTimeoutError: the body did not arrive within the timeout.
            StreamError: the connection broke while reading.
            ResponseTooLargeError: the body is larger than ``max_bytes``.
        """
        try:
            if max_bytes is None:
                return await self._response.aread()
            declared = self._response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes, f"Content-Length {declared}")
            pieces: list[bytes] = []
            size = 0
            while (piece := await self._next()) is not None:
                size += len(piece)
                if size > max_bytes:
                    raise _too_large(max_bytes, f"more than {max_bytes} bytes")
                pieces.append(piece)
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        except httpx.HTTPError as exc:
            raise self._broken(exc) from exc
        finally:
            await self._response.aclose()
            if self.on_end is not None:
                self._ended(None)

    async def next_chunk(self) -> bytes | None:
        """The next bytes of the body as they arrived, or ``None`` at its end.

        Raises:
            PredictionTimeoutError: no bytes arrived within the timeout.
            StreamError: the connection broke.
        """
        try:
            return await self._next()
        except httpx.HTTPError as exc:
            raise self._broken(exc, "streaming") from exc

    async def _next(self) -> bytes | None:
        read = self._read
        if read is None:
            read = self._start_reading()
            if read is None:
                assert self._chunks is not None
                try:
                    return await self._chunks.__anext__()
                except StopAsyncIteration:
                    return None
        chunk = await read()
        if chunk:
            return chunk
        self._read = _at_end
        await self._response.aclose()  # as aiter_raw does at the end of the body
        return None

    async def aclose(self) -> None:
        """Close the response (its connection is dropped if the body was not read to the end)."""
        try:
            await self._response.aclose()
        finally:
            if self.on_end is not None:
                self._ended(None)


async def _at_end() -> bytes:
    return b""  # the read of a body already read to its end


def _too_large(limit: int, seen: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"the server's answer is larger than the cap of {limit} bytes ({seen}); raise "
        "max_response_bytes if such answers are expected",
        limit=limit,
        what="response body",
    )


class ServerClient:
    """A pooled HTTP client for one NIM / vLLM server.

    Args:
        base_url: ``http://host:port``.
        timeout: Seconds for a connection and between bytes of an answer.
        connect_timeout: Seconds to connect (``min(timeout, 30)`` by default).
        max_connections: Pool size.
        transport: An ``httpx.AsyncBaseTransport``; by default an
            :class:`~nim_async.http.transport.AiohttpTransport` sized to ``max_connections``.
        headers: Extra headers on every request.
        trust_env: Honour ``HTTP(S)_PROXY`` and friends from the environment.
        pool_timeout: Seconds to wait for a free connection of an httpx pool (``timeout`` by
            default; ``None`` waits as long as it takes).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 300.0,
        connect_timeout: float | None = None,
        max_connections: int = 256,
        transport: Transport | None = None,
        headers: dict[str, str] | None = None,
        trust_env: bool = True,
        pool_timeout: float | Literal["timeout"] | None = "timeout",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._chat_url = httpx.URL(self.base_url + CHAT_PATH)
        self._health_path: str | None = None
        self.transport = (
            transport
            if transport is not None
            else AiohttpTransport(max_connections=max_connections, keepalive_expiry=30.0)
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                timeout,
                connect=connect_timeout or min(timeout, 30.0),
                pool=timeout if pool_timeout == "timeout" else pool_timeout,
            ),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            transport=self.transport,
            headers={"User-Agent": "nim-async", **(headers or {})},
            cookies=_NoCookies(),
            trust_env=trust_env,
        )
        # httpx calls ``client.cookies.extract_cookies(response)`` on every response, which
        # wraps the response and its request in urllib adapter objects (~11.6 us, a urllib
        # Request parsing the URL) before handing them to the jar, which ignores them. httpx
        # has no public switch for that; this instance's method is replaced instead
        # (tests/http/test_client_cookies.py fails if httpx stops calling it this way).
        self._client.cookies.extract_cookies = _ignore_cookies  # type: ignore[method-assign]

        # What build_request would merge into every chat request (the client's own headers,
        # its timeout); Host and Content-Length are added per request by httpx.Request.
        self._json_headers = httpx.Headers(self._client.headers)
        self._json_headers["Content-Type"] = "application/json"
        self._stream_headers = httpx.Headers(self._json_headers)
        self._stream_headers["Accept"] = "text/event-stream"
        self._chat_extensions = {"timeout": self._client.timeout.as_dict()}

    def __repr__(self) -> str:
        return f"ServerClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def abandon(self) -> None:
        """Drop the pool without awaiting anything (its event loop has closed).

        Used when the loop the pool was made on is gone (a second ``asyncio.run()``): its
        connections cannot be closed from another loop, so they are released quietly.
        """
        abandon = getattr(self.transport, "abandon", None)
        if callable(abandon):
            abandon()

    # ------------------------------------------------------------------ chat

    async def post(self, body: bytes, *, stream: bool) -> ChatResponse:
        """POST a chat-completions body; the answer's body is left to read.

        Args:
            body: The JSON body.
            stream: Ask for ``text/event-stream``.

        Raises:
            ServiceUnavailableError: no server answered (retryable).
            PredictionTimeoutError: the server did not answer within the timeout.
            ServerError: the server answered with an HTTP error (typed subclasses).
        """
        # Built directly, not by client.build_request: its URL, header, cookie and query merging
        # gives the same request each time (~40 us); the merged headers are made once.
        request = httpx.Request(
            "POST",
            self._chat_url,
            content=body,
            headers=self._stream_headers if stream else self._json_headers,
            extensions=self._chat_extensions,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise translate(
                exc,
                base_url=self.base_url,
                phase="connect",
                timeout=self.timeout,
                what=f"POST {CHAT_PATH}",
            ) from exc
        if response.status_code >= 400:
            raise await self._error_of(response)
        return ChatResponse(response, self.base_url, self.timeout)

    async def _error_of(self, response: httpx.Response) -> ServerError:
        try:
            content = await response.aread()
        except httpx.HTTPError:
            content = b""
        finally:
            await response.aclose()
        return error_for_status(
            response.status_code,
            content,
            response.reason_phrase,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )

    # ------------------------------------------------------------------ other endpoints

    async def get(self, path: str, *, request_timeout: float | None = None) -> tuple[int, bytes]:
        """GET ``path``; return ``(status, body)`` whatever the status.

        Args:
            path: Path on the server (``/v1/models``) or an absolute URL.
            request_timeout: Seconds for this request (the client's timeout by default).

        Raises:
            ServiceUnavailableError: no server answered.
            PredictionTimeoutError: it timed out.
        """
        try:
            if request_timeout is None:
                response = await self._client.get(path)
            else:
                response = await self._client.get(path, timeout=request_timeout)
        except httpx.HTTPError as exc:
            raise translate(
                exc,
                base_url=self.base_url,
                phase="connect",
                timeout=request_timeout or self.timeout,
                what=f"GET {path}",
            ) from exc
        return response.status_code, response.content

    async def get_json(self, path: str, *, request_timeout: float | None = None) -> Any:
        """GET ``path`` and decode its JSON answer.

        Raises:
            ServiceUnavailableError: no server answered.
            PredictionTimeoutError: it timed out.
            ServerError: an HTTP error status, or an answer that is not JSON.
        """
        status, content = await self.get(path, request_timeout=request_timeout)
        if status >= 400:
            raise error_for_status(status, content)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ServerError(status, f"GET {path} is not JSON: {content[:200]!r}") from exc

    async def health_ready(self, *, request_timeout: float = 10.0) -> bool:
        """Whether the server says it is ready: NIM ``/v1/health/ready`` or vLLM ``/health``.

        Never raises for a server that is down or answers an error: that is "not ready".

        Args:
            request_timeout: Seconds per request.
        """
        paths = (self._health_path,) if self._health_path else HEALTH_PATHS
        for path in paths:
            try:
                status, _ = await self.get(path, request_timeout=request_timeout)
            except NIMPredictionError:
                return False
            if status == 200:
                self._health_path = path
                return True
            if status not in (404, 405):
                return False  # the server knows this path: it is not ready yet
        return False

    async def models(self) -> list[dict[str, Any]]:
        """The model cards of ``/v1/models`` (each has at least ``id``).

        Raises:
            ServiceUnavailableError: no server answered.
            ServerError: an HTTP error, or no model list in the answer.
        """
        payload = await self.get_json("/v1/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ServerError(200, f"unexpected /v1/models answer: {str(payload)[:200]!r}")
        return [item for item in data if isinstance(item, dict) and "id" in item]

    async def server_info(self, *, request_timeout: float = 10.0) -> ServerInfo:
        """Ask the server what it is (vLLM ``/version``; NIM ``/v1/version``, ``/v1/metadata``).

        Also reads ``owned_by`` in ``/v1/models``. The four are asked in turn; an endpoint that
        is missing, failing or not JSON counts as empty.

        Raises:
            ServiceUnavailableError: no server answered.
        """
        # One after the other, so they share one pooled connection.
        answers: list[dict[str, Any] | BaseException] = []
        for path in ("/version", "/v1/version", "/v1/metadata", "/v1/models"):
            try:
                answers.append(await self._optional_json(path, request_timeout))
            except NIMPredictionError as exc:
                answers.append(exc)
        failures = [a for a in answers if isinstance(a, BaseException)]
        if len(failures) == len(answers):
            raise failures[0]
        found = [a if isinstance(a, dict) else {} for a in answers]
        cards = found[3].get("data")
        owned_by = None
        if isinstance(cards, list) and cards and isinstance(cards[0], dict):
            value = cards[0].get("owned_by")
            owned_by = value if isinstance(value, str) else None
        return ServerInfo(
            vllm_version=found[0], nim_version=found[1], metadata=found[2], owned_by=owned_by
        )

    async def _optional_json(self, path: str, request_timeout: float) -> dict[str, Any]:
        status, content = await self.get(path, request_timeout=request_timeout)
        if status != 200:
            return {}
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    async def fetch(
        self, url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, deadline: float | None = None
    ) -> bytes:
        """Download ``url`` (an image) with the pooled client.

        Args:
            url: The ``http(s)`` URL.
            max_bytes: The largest download accepted; a ``Content-Length`` above it fails
                before the body is read.
            deadline: Seconds for the whole download (``None``: only the client's timeout
                between reads bounds it).

        Raises:
            MediaError: HTTP error, too large, past the deadline, or the download failed.
        """
        try:
            async with asyncio.timeout(deadline):
                return await self._fetch(url, max_bytes)
        except TimeoutError as exc:
            raise MediaError(
                f"the image download from {url} did not finish within {deadline:g} s "
                "(the predictor's timeout)",
                source=url,
            ) from exc

    async def _fetch(self, url: str, max_bytes: int) -> bytes:
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise MediaError(
                        f"downloading the image {url} failed with HTTP {response.status_code}",
                        source=url,
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise MediaError(
                        f"the image at {url} is {declared} bytes, over the cap of {max_bytes} "
                        "bytes (max_download_bytes)",
                        source=url,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaError(
                            f"the image at {url} is larger than the cap of {max_bytes} bytes "
                            "(max_download_bytes)",
                            source=url,
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            error = translate(exc, base_url=url, phase="connect", what="downloading the image")
            raise MediaError(f"cannot download the image {url}: {error}", source=url) from exc

    async def get_text(self, path: str, *, request_timeout: float = 10.0) -> tuple[int, str]:
        """GET ``path`` and return ``(status, text)``; ``(0, message)`` when unreachable."""
        try:
            status, content = await self.get(path, request_timeout=request_timeout)
        except NIMPredictionError as exc:
            return 0, str(exc)
        return status, content.decode("utf-8", "replace")
