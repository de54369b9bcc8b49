"""Several servers behind one predictor: least-outstanding choice, failover, recovery.

``AsyncNIMPredictor(endpoints=[...])`` (also filled from a deployment result's ``endpoints`` or
``NIMConfig(replicas=N)``) keeps one :class:`~nim_async.http.client.ServerClient` per endpoint
in an :class:`EndpointPool`. With one endpoint there is no pool: the predictor works exactly as
before.

* **Choice** (:func:`choose`, no IO): each request goes to the endpoint with the fewest requests
  outstanding from this predictor; ties rotate, so equal servers get equal shares, and a faster
  server, whose requests finish sooner, gets more. Optionally (``Balancing(queue_weight=w)``, off
  by default) each server's own queue, ``vllm:num_requests_waiting`` read from its metrics
  (``/v1/metrics`` on NIM, ``/metrics`` on vLLM) every ``metrics_interval`` seconds, adds ``w``
  per waiting request: for servers that other clients load too. With it off, nothing is polled.
* **Down**: an endpoint that refuses the connection (or breaks it before answering), drops a
  stream while it is read, or answers 502, 503 or 504 is marked down and gets no new requests
  while another endpoint is up. A background health check (the readiness probe of
  :meth:`ServerClient.health_ready <nim_async.http.client.ServerClient.health_ready>`: NIM's
  ``/v1/health/ready``, vLLM's ``/health``) polls it with jittered exponential backoff
  (``health_interval`` doubling up to ``health_max_interval``) and brings it back when it is
  ready; any answer it gives to a request brings it back too. An endpoint that goes down again
  before serving a request starts its next health check from a longer wait.
* **Failover**: a request that failed before anything was handed out (no answer; a non-streamed
  answer whose body broke; HTTP 429, 502, 503, 504) is sent again under the predictor's one
  :class:`~nim_async.http.retry.RetryPolicy`, to an endpoint it has not tried when one is up.
  Attempts count across endpoints, so a call still sends at most ``retries + 1`` times in all.
  Moving on to an endpoint the request has not tried is immediate (the policy's backoff spares a
  failing server, and this one has not failed); the backoff applies when the request has to go
  back to an endpoint it tried, or every endpoint is down. A stream that broke after tokens were
  handed out is not resent (the caller has them); the endpoint is marked down, and
  :func:`~nim_async.predict.batch.predict_many` runs such an input again under its own policy,
  on an endpoint other than the one that failed it (a :class:`Route` per input).
* **All down**: when the attempts are spent and no endpoint is up,
  :class:`~nim_async.errors.EndpointsUnavailableError` names every endpoint and why it is down.

Outstanding requests are counted from the send until the answer is read to its end or closed
(:attr:`ChatResponse.on_end <nim_async.http.client.ChatResponse.on_end>`): close streams (``async
with``) so their endpoint's count comes down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import TypeVar

from nim_async.errors import EndpointsUnavailableError, NIMPredictionError, ServerError
from nim_async.http.client import ChatResponse, ServerClient
from nim_async.http.retry import RetryPolicy
from nim_async.predict.routing import (
    _ROUTE,
    DOWN_STATUSES,
    WAITING_METRIC,
    Balancing,
    EndpointState,
    EndpointStatus,
    Route,
    choose,
    current_route,
    down_reason,
    parse_waiting,
    route_scope,
    shown_url,
)

__all__ = [
    "DOWN_STATUSES",
    "METRICS_PATHS",
    "WAITING_METRIC",
    "Balancing",
    "EndpointPool",
    "EndpointState",
    "EndpointStatus",
    "Route",
    "choose",
    "current_route",
    "down_reason",
    "parse_waiting",
    "route_scope",
    "shown_url",
]

T = TypeVar("T")

logger = logging.getLogger("nim_async")

#: Where a server's Prometheus metrics are looked for, in turn (NIM's, then vLLM's).
METRICS_PATHS = ("/v1/metrics", "/metrics")


class EndpointPool:
    """One :class:`~nim_async.http.client.ServerClient` per endpoint, and which to use.

    Made by the predictor for two or more endpoints (see the module docstring). All methods run
    on the predictor's event loop; the state changes only between awaits.

    Args:
        urls: The endpoints' base URLs (two or more, distinct).
        make_client: Makes the client of one URL (called again after :meth:`rebind`).
        retry: The predictor's retry policy.
        balancing: Choice and health-check settings (:class:`Balancing` defaults when ``None``).

    Raises:
        ValueError: for fewer than two URLs, or a URL given twice.
    """

    def __init__(
        self,
        urls: Sequence[str],
        make_client: Callable[[str], ServerClient],
        *,
        retry: RetryPolicy,
        balancing: Balancing | None = None,
    ) -> None:
        if len(urls) < 2:
            raise ValueError("an endpoint pool needs two or more endpoints")
        if len(set(urls)) != len(urls):
            raise ValueError("each endpoint may be given once")
        self.urls: tuple[str, ...] = tuple(urls)
        self._make_client = make_client
        self._states = [EndpointState(url) for url in self.urls]
        self._clients = [make_client(url) for url in self.urls]
        self._retry = retry
        # A non-streamed answer whose body broke is sent again whole: nothing was handed out.
        self._read_retry = retry.with_changes(broken_streams=True)
        self.balancing = balancing or Balancing()
        self._turn = 0
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._metrics: asyncio.Task[None] | None = None
        self._metrics_paths: dict[int, str] = {}
        self._closed = False

    def __repr__(self) -> str:
        up = sum(state.down is None for state in self._states)
        shown = ", ".join(shown_url(url) for url in self.urls)
        return f"EndpointPool([{shown}], up={up})"

    # ------------------------------------------------------------------ state

    @property
    def clients(self) -> tuple[ServerClient, ...]:
        """The clients, in the order of :attr:`urls`."""
        return tuple(self._clients)

    def status(self) -> list[EndpointStatus]:
        """A snapshot of every endpoint, in the order of :attr:`urls`."""
        return [
            EndpointStatus(
                url=s.url,
                up=s.down is None,
                reason=s.down,
                outstanding=s.outstanding,
                queue=s.queue,
                sent=s.sent,
                served=s.served,
                failed=s.failed,
            )
            for s in self._states
        ]

    def has_up(self, avoid: Collection[str] = ()) -> bool:
        """Whether an endpoint is up (and not among the URLs in ``avoid``)."""
        return any(s.down is None and s.url not in avoid for s in self._states)

    def _fresh(self, avoid: Collection[int]) -> bool:
        return any(s.down is None and i not in avoid for i, s in enumerate(self._states))

    def _pick(self, avoid: Collection[int]) -> int:
        turn = self._turn
        self._turn = (turn + 1) % len(self._states)
        return choose(self._states, avoid, start=turn, queue_weight=self.balancing.queue_weight)

    def _sleeper(self, avoid: Collection[int]) -> Callable[[float], Awaitable[None]]:
        async def sleep(wait: float) -> None:
            # The policy's backoff spares a server that failed; one not tried yet has not.
            await asyncio.sleep(0.0 if self._fresh(avoid) else wait)

        return sleep

    def _ended(self, index: int, error: NIMPredictionError | None) -> None:
        state = self._states[index]
        state.outstanding -= 1
        if error is None:
            state.served += 1
            state.downs = 0
        else:
            self._failed(index, error)

    def _failed(self, index: int, error: BaseException) -> None:
        state = self._states[index]
        state.failed += 1
        reason = down_reason(error)
        if reason is not None:
            self._mark_down(index, reason)
        elif isinstance(error, ServerError) and state.down is not None:
            self._mark_up(index)  # it answered

    def _mark_down(self, index: int, reason: str) -> None:
        state = self._states[index]
        if state.down is None:
            state.downs += 1
            logger.warning(
                "endpoint %s is down (%s); health-checking it in the background",
                shown_url(state.url),
                reason,
            )
        state.down = reason
        if index in self._watchers or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - the pool is used on its loop
            return
        self._watchers[index] = loop.create_task(self._watch(index))

    def _mark_up(self, index: int) -> None:
        state = self._states[index]
        if state.down is None:
            return
        state.down = None
        state.queue = 0.0
        logger.info("endpoint %s is up again", shown_url(state.url))
        task = self._watchers.pop(index, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _watch(self, index: int) -> None:
        state = self._states[index]
        b = self.balancing
        # The one policy's backoff (equal jitter), growing with each time this endpoint went down.
        backoff = RetryPolicy(base=b.health_interval, cap=b.health_max_interval)
        failures = max(state.downs, 1)
        try:
            while state.down is not None:
                await asyncio.sleep(backoff.delay(failures))
                if state.down is None:
                    break
                if await self._clients[index].health_ready(request_timeout=b.health_timeout):
                    self._mark_up(index)
                    break
                failures += 1
        finally:
            if self._watchers.get(index) is asyncio.current_task():
                del self._watchers[index]

    def _start_metrics(self) -> None:
        if self._closed or self._metrics is not None:
            return
        self._metrics = asyncio.get_running_loop().create_task(self._poll_metrics())

    async def _poll_metrics(self) -> None:
        while True:
            try:
                await asyncio.gather(
                    *(self._read_queue(i) for i, s in enumerate(self._states) if s.down is None)
                )
            except Exception as exc:  # pragma: no cover - get_text answers (0, why) instead
                logger.debug("metrics poll failed: %s", type(exc).__name__)
            await asyncio.sleep(self.balancing.metrics_interval)

    async def _read_queue(self, index: int) -> None:
        known = self._metrics_paths.get(index)
        client = self._clients[index]
        for path in (known,) if known else METRICS_PATHS:
            status, text = await client.get_text(
                path, request_timeout=self.balancing.health_timeout
            )
            waiting = parse_waiting(text) if status == 200 else None
            if waiting is not None:
                self._metrics_paths[index] = path
                self._states[index].queue = waiting
                return
        self._states[index].queue = 0.0

    def _give_up(self, error: BaseException) -> None:
        if down_reason(error) is not None and not self.has_up():
            raise EndpointsUnavailableError(
                {shown_url(s.url): s.down or "down" for s in self._states}
            ) from error

    # ------------------------------------------------------------------ requests

    async def send(self, body: bytes, *, stream: bool, deadline: float | None) -> ChatResponse:
        """POST a chat body to the chosen endpoint, failing over before any answer.

        The answer's body is left to read; its endpoint's outstanding count comes down when it
        is read to its end or closed.

        Args:
            body: The JSON body.
            stream: Ask for ``text/event-stream``.
            deadline: Seconds the retries may take (the caller's timeout).

        Raises:
            EndpointsUnavailableError: every endpoint is down and the attempts are spent.
            NIMPredictionError: the last attempt's error otherwise (see ``ServerClient.post``).
        """
        response, _ = await self._request(body, stream=stream, deadline=deadline, read=None)
        return response

    async def complete(
        self, body: bytes, *, deadline: float | None, max_bytes: int | None
    ) -> tuple[int, bytes]:
        """POST a chat body and read the whole answer; a body that broke is sent again whole.

        Args:
            body: The JSON body (not streamed).
            deadline: Seconds the retries may take.
            max_bytes: The largest answer read.

        Returns:
            The HTTP status and the body.

        Raises:
            EndpointsUnavailableError: every endpoint is down and the attempts are spent.
            NIMPredictionError: the last attempt's error otherwise.
        """
        response, content = await self._request(
            body, stream=False, deadline=deadline, read=(max_bytes,)
        )
        assert content is not None
        return response.status_code, content

    async def _request(
        self,
        body: bytes,
        *,
        stream: bool,
        deadline: float | None,
        read: tuple[int | None] | None,
    ) -> tuple[ChatResponse, bytes | None]:
        route = _ROUTE.get()
        avoid: set[int] = set()
        if route is not None:
            route.pool = self
            if route.avoid:
                avoid.update(i for i, url in enumerate(self.urls) if url in route.avoid)
        if self.balancing.queue_weight and self._metrics is None:
            self._start_metrics()
        policy = self._retry if read is None else self._read_retry
        retry = policy.start(
            deadline=deadline, label="POST /v1/chat/completions", sleep=self._sleeper(avoid)
        )
        while True:
            index = self._pick(avoid)
            state = self._states[index]
            if route is not None:
                route.last = state.url
            state.outstanding += 1
            state.sent += 1
            error: NIMPredictionError
            try:
                response = await self._clients[index].post(body, stream=stream)
            except NIMPredictionError as exc:
                state.outstanding -= 1
                self._failed(index, exc)
                error = exc
            except BaseException:
                state.outstanding -= 1
                raise
            else:
                if state.down is not None:
                    self._mark_up(index)
                response.on_end = partial(self._ended, index)
                if read is None:
                    return response, None
                try:
                    return response, await response.read(read[0])
                except NIMPredictionError as exc:  # on_end has counted it
                    error = exc
            avoid.add(index)
            if route is not None:
                route.avoid.add(state.url)
            if not await retry.backoff(error):
                self._give_up(error)
                raise error

    async def first(
        self, fn: Callable[[ServerClient], Awaitable[T]], *, label: str = "request"
    ) -> T:
        """Await ``fn(client)`` on an endpoint that is up, moving on from one that fails.

        Used for the server's version and model list (the endpoints serve the same model).
        Each endpoint that is up is asked once before the retry policy counts attempts (a
        lookup is not a send of a request).

        Args:
            fn: Makes one attempt with one endpoint's client.
            label: What is asked, for the retry log.

        Raises:
            EndpointsUnavailableError: every endpoint is down and the attempts are spent.
            NIMPredictionError: the last attempt's error otherwise.
        """
        avoid: set[int] = set()
        retry = self._retry.start(label=label, sleep=self._sleeper(avoid))
        while True:
            index = self._pick(avoid)
            try:
                result = await fn(self._clients[index])
            except NIMPredictionError as exc:
                self._failed(index, exc)
                avoid.add(index)
                if self._fresh(avoid):
                    continue
                if not await retry.backoff(exc):
                    self._give_up(exc)
                    raise
                continue
            self._mark_up(index)
            return result

    async def any_ready(self, *, request_timeout: float = 10.0) -> bool:
        """Whether any endpoint reports ready (each is asked; a ready one is marked up)."""
        answers = await asyncio.gather(
            *(c.health_ready(request_timeout=request_timeout) for c in self._clients)
        )
        for index, ready in enumerate(answers):
            if ready:
                self._mark_up(index)
        return any(answers)

    # ------------------------------------------------------------------ lifecycle

    def _forget_tasks(self) -> list[asyncio.Task[None]]:
        tasks = list(self._watchers.values())
        if self._metrics is not None:
            tasks.append(self._metrics)
        self._watchers.clear()
        self._metrics = None
        return tasks

    async def aclose(self) -> None:
        """Stop the health checks and metrics polls and close every client. Idempotent."""
        self._closed = True
        tasks = self._forget_tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        results = await asyncio.gather(
            *(client.aclose() for client in self._clients), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def abandon(self) -> None:
        """Drop the clients and tasks of an event loop that has closed, awaiting nothing."""
        self._closed = True
        self._forget_tasks()
        for client in self._clients:
            client.abandon()

    def rebind(self) -> ServerClient:
        """Start afresh on a new event loop: new clients, every endpoint up, nothing in flight.

        Returns:
            The first endpoint's new client.
        """
        self.abandon()
        self._clients = [self._make_client(url) for url in self.urls]
        for state in self._states:
            state.outstanding = 0
            state.queue = 0.0
            state.down = None
            state.downs = 0
        self._metrics_paths.clear()
        self._closed = False
        return self._clients[0]
