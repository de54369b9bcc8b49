"""Readiness polling of a NIM or vLLM server over HTTP.

Used by the deployer while a container starts. A server is ready when NIM's ``/v1/health/ready``
or, on a server without it (vLLM), ``/health`` answers 200 (see
:meth:`nim_async.http.client.ServerClient.health_ready`). Connection failures and other answers
mean "not ready yet"; only the caller decides when to give up. httpx errors never leave
``nim_async.http``.
"""

from __future__ import annotations

import asyncio
import time

from nim_async.errors import APIError, NIMPredictionError
from nim_async.http.client import ServerClient
from nim_async.http.retry import RetryPolicy

__all__ = ["ReadinessProbe"]


class ReadinessProbe:
    """Poll a server's readiness endpoint with a short, capped backoff.

    The wait between polls is the one retry policy's backoff (:mod:`nim_async.http.retry`:
    exponential with equal jitter, from ``first_interval`` up to ``max_interval``).

    Args:
        base_url: The server's URL (``http://127.0.0.1:8000``).
        first_interval: Seconds between the first polls.
        max_interval: Cap of the growing interval (keeps the ready → noticed delay short).
        request_timeout: Timeout of one HTTP request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        first_interval: float = 0.05,
        max_interval: float = 0.25,
        request_timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.first_interval = first_interval
        self.max_interval = max_interval
        self._backoff = RetryPolicy(base=first_interval, cap=max(max_interval, first_interval))
        self._request_timeout = request_timeout
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback calls
        self._client = ServerClient(
            self.base_url, timeout=request_timeout, max_connections=4, trust_env=False
        )
        self.polls = 0
        self.ready_at: float | None = None

    async def __aenter__(self) -> ReadinessProbe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def is_ready(self) -> bool:
        """One poll: ``True`` when ``/v1/health/ready`` (NIM) or ``/health`` (vLLM) answers 200."""
        self.polls += 1
        return await self._client.health_ready(request_timeout=self._request_timeout)

    async def wait(self) -> float:
        """Poll until ready (no time limit: the caller cancels or wraps it in a timeout).

        Returns:
            The ``time.perf_counter()`` value when readiness was observed.
        """
        waits = 0
        while True:
            if await self.is_ready():
                self.ready_at = time.perf_counter()
                return self.ready_at
            waits += 1
            await asyncio.sleep(self._backoff.delay(waits))

    async def models(self) -> list[str]:
        """The model ids listed at ``/v1/models``.

        Raises:
            APIError: If the server does not answer with a model list.
        """
        try:
            cards = await self._client.models()
        except NIMPredictionError as exc:
            raise APIError(f"GET {self.base_url}/v1/models failed: {exc}") from exc
        return [str(card["id"]) for card in cards]
