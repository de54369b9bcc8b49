"""Plain HTTP GETs for downloads (the Datature Vi API and the storage behind its URLs).

The custom-weights code (:mod:`nim_async.deploy.weights`) fetches a small JSON document and then
streams a large archive; it does so through :class:`DownloadClient`, so httpx stays inside
:mod:`nim_async.http`. A transport failure leaves this module as the ``nim_async`` error that
:func:`nim_async.http.errors.translate` (the one httpx mapping) gives it: no answer →
:class:`~nim_async.errors.ServiceUnavailableError`, a timeout →
:class:`~nim_async.errors.PredictionTimeoutError`, a connection broken mid-body →
:class:`~nim_async.errors.StreamError`; :func:`~nim_async.http.errors.failure_kind` names it.
Messages name only the server's origin, never a path, query or header (a pre-signed URL's query
is a secret). HTTP statuses are answers, not errors: the caller decides what a 403 or a 416
means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from nim_async.http.errors import translate

__all__ = ["Answer", "DownloadClient", "StreamedAnswer"]


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what messages may name (a query can be a secret)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer.

    Attributes:
        status: The HTTP status code.
        headers: The response headers (lower-case names).
        body: The body.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")


class StreamedAnswer:
    """An HTTP answer whose body is read in chunks (see :meth:`DownloadClient.stream`)."""

    def __init__(self, response: httpx.Response, origin: str) -> None:
        self._response = response
        self._origin = origin
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, undecoded (byte offsets are the stored object's).

        Raises:
            StreamError: if the connection breaks mid-body.
            PredictionTimeoutError: if the server stops sending.
        """
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise translate(exc, base_url=self._origin, phase="read", what="the download") from exc


class DownloadClient:
    """An HTTP client for downloads (redirects followed, proxies from the environment honoured).

    Args:
        timeout: Seconds for reading, writing and waiting for a pooled connection.
        connect_timeout: Seconds to connect.
    """

    def __init__(self, *, timeout: float = 60.0, connect_timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout), follow_redirects=True
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """GET ``url`` and read the whole answer.

        Args:
            url: The URL.
            headers: Request headers.
            params: Query parameters.

        Raises:
            ServiceUnavailableError: if no answer arrives.
            PredictionTimeoutError: if the server does not answer in time.
        """
        origin = _origin(url)
        try:
            response = await self._client.get(url, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise translate(exc, base_url=origin, phase="connect", what="GET") from exc
        return Answer(response.status_code, response.headers, response.content)

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamedAnswer]:
        """GET ``url`` and hand over the answer before its body is read.

        Args:
            url: The URL.
            headers: Request headers.

        Yields:
            The answer; read its body with :meth:`StreamedAnswer.chunks`.

        Raises:
            ServiceUnavailableError: if no answer arrives.
            PredictionTimeoutError: if the server does not answer in time.
        """
        origin = _origin(url)
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                yield StreamedAnswer(response, origin)
        except httpx.HTTPError as exc:
            raise translate(exc, base_url=origin, phase="connect", what="GET") from exc
