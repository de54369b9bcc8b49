"""Plain HTTP GETs for downloads (the Datature Vi API and the storage behind its URLs).

The custom-weights code (:mod:`nim_async.deploy.weights`) fetches a small JSON document and then
streams a large archive; it does so through :class:`DownloadClient`, so httpx stays inside
:mod:`nim_async.http`. A transport failure (no connection, a connection broken mid-body, a
timeout) leaves this module as :class:`TransferError`, naming the failure without any URL or
header (a pre-signed URL's query is a secret). HTTP statuses are answers, not errors: the caller
decides what a 403 or a 416 means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

__all__ = ["Answer", "DownloadClient", "StreamedAnswer", "TransferError"]


class TransferError(Exception):
    """The transfer failed before or while the answer arrived (not an HTTP status).

    Args:
        kind: What failed, as a short name (``ConnectError``, ``ReadTimeout``,
            ``RemoteProtocolError``); never a URL or header.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


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

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, undecoded (byte offsets are the stored object's).

        Raises:
            TransferError: if the connection breaks or times out mid-body.
        """
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise TransferError(type(exc).__name__) from exc


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
            TransferError: if no answer arrives (connection, timeout, protocol failure).
        """
        try:
            response = await self._client.get(url, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise TransferError(type(exc).__name__) from exc
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
            TransferError: if no answer arrives, or the connection fails while open.
        """
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                yield StreamedAnswer(response)
        except httpx.HTTPError as exc:
            raise TransferError(type(exc).__name__) from exc
