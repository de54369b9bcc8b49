"""Choosing among several endpoints, with no IO: the state, the choice, why one is down, routes.

The plain-data half of :mod:`nim_async.predict.endpoints`: :class:`Balancing` (the settings,
checked when made), :class:`EndpointState` (one endpoint as its pool keeps it),
:class:`EndpointStatus` (a snapshot for callers), :func:`choose` (least outstanding, ties
rotating), :func:`down_reason` (which errors take an endpoint down), :func:`parse_waiting` (a
server's queue from its metrics text) and :class:`Route` (where one input's attempts went, across
the calls ``predict_many`` makes for it). The pool that sends, health-checks and polls is
:class:`~nim_async.predict.endpoints.EndpointPool`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nim_async.errors import ServiceUnavailableError, StreamError
from nim_async.http.errors import connection_problem, failure_kind
from nim_async.protocol.prometheus import parse_prometheus

if TYPE_CHECKING:
    from nim_async.predict.endpoints import EndpointPool

__all__ = [
    "DOWN_STATUSES",
    "WAITING_METRIC",
    "Balancing",
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

#: HTTP answers that mark an endpoint down (gateway errors, unavailable): a health check decides.
DOWN_STATUSES: frozenset[int] = frozenset({502, 503, 504})
#: The server-side queue length read when ``Balancing.queue_weight`` is set.
WAITING_METRIC = "vllm:num_requests_waiting"

_USERINFO = re.compile(r"//[^/@]*@")


def shown_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages and logs."""
    return _USERINFO.sub("//", url)


@dataclass(frozen=True, slots=True)
class Balancing:
    """How a predictor with several endpoints spreads requests and watches its servers.

    Attributes:
        queue_weight: Weight of each waiting request in a server's own queue
            (``vllm:num_requests_waiting``) added to the requests this predictor has outstanding
            there. ``0`` (the default) turns it off: no metrics are polled and the choice is
            by this predictor's outstanding requests alone. Worth setting when other clients
            load the same servers.
        metrics_interval: Seconds between metrics polls (with ``queue_weight`` set).
        health_interval: Seconds before the first health check of an endpoint marked down
            (jittered: half to all of it); doubled after each failed check.
        health_max_interval: The longest wait between health checks.
        health_timeout: Seconds for one health-check or metrics request.

    Raises:
        ValueError: for a negative weight or a duration that is not positive.
    """

    queue_weight: float = 0.0
    metrics_interval: float = 1.0
    health_interval: float = 0.25
    health_max_interval: float = 10.0
    health_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.queue_weight) and self.queue_weight >= 0):
            raise ValueError(f"queue_weight must be 0 or more, got {self.queue_weight}")
        durations = ("metrics_interval", "health_interval", "health_max_interval", "health_timeout")
        for name in durations:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.health_max_interval < self.health_interval:
            raise ValueError("health_max_interval must not be below health_interval")


@dataclass(slots=True)
class EndpointState:
    """One endpoint as the pool sees it (plain data; changed only by its pool).

    Attributes:
        url: The base URL.
        outstanding: Requests sent there and not yet read to their end or closed.
        queue: The server's own ``vllm:num_requests_waiting`` at the last metrics poll.
        down: Why the endpoint is down, or ``None`` while it is up.
        downs: Times it was marked down since it last served a request.
        sent: Requests sent there.
        served: Answers read to their end or closed without a transport failure.
        failed: Requests that failed there (any error, HTTP errors included).
    """

    url: str
    outstanding: int = 0
    queue: float = 0.0
    down: str | None = None
    downs: int = 0
    sent: int = 0
    served: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """A snapshot of one endpoint (:meth:`EndpointPool.status`).

    Attributes:
        url: The base URL.
        up: Whether requests go there.
        reason: Why it is down (``"connection refused"``, ``"HTTP 503"``, ...), or ``None``.
        outstanding: Requests in flight there now.
        queue: The server's own waiting requests at the last metrics poll (0 when not polled).
        sent: Requests sent there.
        served: Answers read to their end or closed without a transport failure.
        failed: Requests that failed there.
    """

    url: str
    up: bool
    reason: str | None
    outstanding: int
    queue: float
    sent: int
    served: int
    failed: int


def choose(
    states: Sequence[EndpointState],
    avoid: Collection[int] = (),
    *,
    start: int = 0,
    queue_weight: float = 0.0,
) -> int:
    """The index of the endpoint the next request goes to (no IO).

    Preference, in order: an endpoint that is up and not in ``avoid``; one that is up; one that
    is down and not in ``avoid`` (a probe: nothing is up); any. Within the first group that has
    one, the lowest load: ``outstanding + queue_weight * queue``. Ties go to the first one from
    ``start`` on (the pool rotates ``start``), so equal endpoints take turns.

    Args:
        states: The endpoints (at least one).
        avoid: Indices this request should not go to again (tried already).
        start: Where ties start.
        queue_weight: Weight of each server-side waiting request.

    Raises:
        ValueError: for no endpoints.
    """
    n = len(states)
    if n == 0:
        raise ValueError("no endpoints to choose from")
    best = -1
    best_group = 4
    best_load = 0.0
    for k in range(n):
        i = (start + k) % n
        state = states[i]
        group = (2 if state.down is not None else 0) + (1 if i in avoid else 0)
        if group > best_group:
            continue
        load = state.outstanding + queue_weight * state.queue if queue_weight else state.outstanding
        if group < best_group or load < best_load:
            best, best_group, best_load = i, group, load
    return best


def down_reason(error: BaseException) -> str | None:
    """Why ``error`` takes its endpoint down, or ``None`` when it does not (no IO).

    Down: no answer (:class:`~nim_async.errors.ServiceUnavailableError`: refused, reset before
    an answer, DNS), a connection that broke while an answer was read
    (:class:`~nim_async.errors.StreamError`, as :attr:`ChatResponse.on_end
    <nim_async.http.client.ChatResponse.on_end>` reports it), HTTP 502/503/504. Not down:
    timeouts, other HTTP errors (the server answered), errors inside a stream's events.

    Args:
        error: What a request to the endpoint raised.
    """
    if isinstance(error, ServiceUnavailableError):
        return connection_problem(error) or failure_kind(error)
    if isinstance(error, StreamError):
        return f"the stream broke ({connection_problem(error) or failure_kind(error)})"
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and status in DOWN_STATUSES:
        return f"HTTP {status}"
    return None


def parse_waiting(text: str) -> float | None:
    """The total of ``vllm:num_requests_waiting`` in a Prometheus text exposition (no IO).

    Args:
        text: The body of ``/metrics``.

    Returns:
        The sum over its label sets, or ``None`` when the metric is missing or not finite.
    """
    total = parse_prometheus(text).get(WAITING_METRIC)
    return total if total is not None and math.isfinite(total) else None


@dataclass(slots=True, eq=False)
class Route:
    """Where one input's attempts went, across the calls ``predict_many`` makes for it.

    ``predict_many`` opens a :func:`route_scope` around each input; a pool the predictor sends
    through records the endpoint of each attempt in :attr:`last`, and avoids the endpoints in
    :attr:`avoid` while another is up.

    Attributes:
        avoid: Base URLs this input should not go to again (they failed it).
        last: The endpoint of the latest attempt.
        pool: The pool that sent it (``None`` for a predictor with one endpoint).
    """

    avoid: set[str] = field(default_factory=set)
    last: str | None = None
    pool: EndpointPool | None = None

    def avoid_last(self) -> None:
        """Avoid the endpoint of the latest attempt from now on."""
        if self.last is not None:
            self.avoid.add(self.last)

    def has_alternative(self) -> bool:
        """Whether an endpoint that is up and not avoided exists (then no backoff is needed)."""
        pool = self.pool
        return pool is not None and pool.has_up(self.avoid)


_ROUTE: contextvars.ContextVar[Route | None] = contextvars.ContextVar(
    "nim_async_route", default=None
)


def current_route() -> Route | None:
    """The :class:`Route` of the input being predicted in this task, if any."""
    return _ROUTE.get()


@contextlib.contextmanager
def route_scope() -> Iterator[Route]:
    """Give the calls made inside (in this task) one :class:`Route`."""
    route = Route()
    token = _ROUTE.set(route)
    try:
        yield route
    finally:
        _ROUTE.reset(token)
