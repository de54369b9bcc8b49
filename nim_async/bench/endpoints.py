"""Several endpoints driven as one service: URL checks, the balancer and per-endpoint figures.

``nim-async bench --url A --url B`` sends every request to one of the endpoints, chosen by
:class:`LeastOutstanding`: the endpoint with the fewest requests in flight from this client
(ties go round the endpoints in turn). A faster endpoint finishes its requests sooner, so it has
fewer outstanding and is sent more. An endpoint whose request fails in the transport (it refuses
connections, or drops a stream: :data:`DOWN_ERRORS`) is marked down: it gets no new request for
a back-off (0.5 s, doubling per failed probe up to 8 s), then one probe request; a probe that
succeeds marks it up again. Every failed request, probe or not, is recorded as an error on its
endpoint; requests are never moved to another endpoint after they were sent (the bench measures
what the service did). An HTTP error answer (``HTTP 503``...) does not mark an endpoint down:
the server is up and answering.

Each load point of a run with several URLs gains (:func:`add_endpoint_figures`) a ``urls``
list, ``balance`` (the policy's name), ``url: null`` and ``endpoints``: one summary per endpoint
(:func:`~nim_async.bench.metrics.summarize` of the requests it served, over the point's
duration, so the endpoints' request and token rates add up to the point's) with its URL, its
``share`` of the requests, ``marked_down`` (times the balancer marked it down while measuring),
``down_s`` (seconds it was marked down while measuring; with ``--workers``, the longest any
worker had it down) and ``server`` (its own ``/metrics`` deltas). The point's ``server`` is
then computed from the endpoints' scrapes summed (:func:`fill_server`): counts and gauges add
up, and a mean is the pooled sums over the pooled counts. With one URL none of these keys is
added.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nim_async.bench.client import PreparedRequest
from nim_async.bench.metrics import SLO, RequestRecord, summarize
from nim_async.bench.server_metrics import server_deltas, sum_scrapes
from nim_async.protocol.urls import base_url_problem

__all__ = [
    "BALANCE",
    "DOWN_ERRORS",
    "Endpoint",
    "EndpointClient",
    "LeastOutstanding",
    "add_endpoint_figures",
    "check_url",
    "fill_server",
]

BALANCE = "least-outstanding"
"""The policy's name, as the report and the JSON (``balance``) give it."""

DOWN_ERRORS = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ReadError",
        "WriteError",
        "CloseError",
        "NetworkError",
        "RemoteProtocolError",
        "IncompleteStream",
        "ServiceUnavailableError",
    }
)
"""Record errors that mark an endpoint down: it refused the connection or dropped the stream."""


def check_url(text: str) -> str:
    """Check one ``--url``: ``http(s)://host[:port][/path]``; returned without a trailing ``/``.

    Raises:
        ValueError: with the reason, for anything else.
    """
    value = text.strip()
    problem = base_url_problem(value)
    if problem is not None:
        raise ValueError(f"bad URL {text!r}: {problem}")
    return value.rstrip("/")


class EndpointClient(Protocol):
    """What the balancer needs of one endpoint's client (the bench client)."""

    base_url: str

    async def send(self, request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send ``request``, filling ``record``; never raise."""
        ...


@dataclass(slots=True)
class Endpoint:
    """One endpoint as the balancer sees it.

    Attributes:
        url: Its base URL.
        client: Sends its requests.
        outstanding: Requests in flight to it now.
        down: Whether it is marked down.
        retry_at: When a marked-down endpoint may get its next (probe) request.
        failures: Failed attempts in a row since it was last up (sets the back-off).
        probing: Whether its probe request is in flight.
        marked_down: Times it was marked down.
        down_since: When it was last marked down.
        down_total: Seconds it was marked down before ``down_since``.
    """

    url: str
    client: EndpointClient
    outstanding: int = 0
    down: bool = False
    retry_at: float = 0.0
    failures: int = 0
    probing: bool = False
    marked_down: int = 0
    down_since: float = 0.0
    down_total: float = 0.0

    def down_seconds(self, now: float) -> float:
        """Seconds it has been marked down in all, up to ``now``."""
        return self.down_total + (now - self.down_since if self.down else 0.0)


class LeastOutstanding:
    """Sends each request to the endpoint with the fewest requests in flight.

    Args:
        clients: One client per endpoint, in the order of the ``--url`` options.
        backoff: Seconds a marked-down endpoint waits for its first probe.
        max_backoff: The longest wait between probes (the back-off doubles per failed probe).
        clock: The time source (``time.perf_counter``).
    """

    def __init__(
        self,
        clients: Sequence[EndpointClient],
        *,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not clients:
            raise ValueError("no endpoints")
        self.endpoints = [Endpoint(url=c.base_url, client=c) for c in clients]
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._turn = 0

    def __repr__(self) -> str:
        return f"LeastOutstanding({[e.url for e in self.endpoints]!r})"

    @property
    def urls(self) -> list[str]:
        """The endpoints' URLs, in order."""
        return [e.url for e in self.endpoints]

    def counters(self) -> tuple[list[int], list[float]]:
        """Each endpoint's times marked down and seconds down so far (subtract two readings)."""
        now = self._clock()
        return [e.marked_down for e in self.endpoints], [
            e.down_seconds(now) for e in self.endpoints
        ]

    def since(self, start: tuple[list[int], list[float]]) -> tuple[list[int], list[float]]:
        """:meth:`counters` now minus ``start`` (an earlier reading)."""
        marks, downs = self.counters()
        return (
            [b - a for a, b in zip(start[0], marks, strict=True)],
            [b - a for a, b in zip(start[1], downs, strict=True)],
        )

    def pick(self) -> tuple[Endpoint, bool]:
        """The endpoint for the next request, and whether that request is its probe.

        Up endpoints, and a down one whose back-off has passed and whose probe is not in flight,
        are candidates; the one with the fewest outstanding requests wins, ties in turn. When
        every endpoint is down and waiting, the one that may be retried first is used anyway
        (its failures are recorded; nothing is held back).
        """
        now = self._clock()
        n = len(self.endpoints)
        start = self._turn
        self._turn = (start + 1) % n
        best: Endpoint | None = None
        for i in range(n):
            e = self.endpoints[(start + i) % n]
            if e.down and (e.probing or e.retry_at > now):
                continue
            if best is None or e.outstanding < best.outstanding:
                best = e
        if best is not None:
            return best, best.down
        return min(self.endpoints, key=lambda e: (e.retry_at, e.outstanding)), False

    async def send(self, request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send ``request`` to :meth:`pick`'s endpoint; ``record.endpoint`` names it."""
        endpoint, probe = self.pick()
        if probe:
            endpoint.probing = True
        record.endpoint = endpoint.url
        endpoint.outstanding += 1
        try:
            await endpoint.client.send(request, record)
        finally:
            endpoint.outstanding -= 1
            if probe:
                endpoint.probing = False
            self._observe(endpoint, record, probe)
        return record

    def _observe(self, endpoint: Endpoint, record: RequestRecord, probe: bool) -> None:
        if record.error in DOWN_ERRORS:
            if endpoint.down and not probe:
                return  # sent before it was marked down; its probe decides
            now = self._clock()
            if not endpoint.down:
                endpoint.marked_down += 1
                endpoint.down_since = now
            endpoint.down = True
            endpoint.failures += 1
            wait = min(self.max_backoff, self.backoff * 2 ** (endpoint.failures - 1))
            endpoint.retry_at = now + wait
        else:  # it answered (even with an HTTP error): it is up
            if endpoint.down:
                endpoint.down_total += self._clock() - endpoint.down_since
            endpoint.down = False
            endpoint.failures = 0


def add_endpoint_figures(
    point: dict[str, Any],
    records: Sequence[RequestRecord],
    urls: Sequence[str],
    *,
    slo: SLO | None = None,
    marked_down: Sequence[int] | None = None,
    down_s: Sequence[float] | None = None,
) -> None:
    """Add ``urls``, ``balance``, ``url: null`` and ``endpoints`` to a load point of many URLs.

    Args:
        point: The merged load point (its ``duration_s`` is each endpoint's duration too).
        records: Every measured request of the point, each naming its ``endpoint``.
        urls: The endpoints, in order.
        slo: Goodput objectives.
        marked_down: Times each endpoint was marked down while measuring.
        down_s: Seconds each endpoint was marked down while measuring.
    """
    total = len(records)
    by_url: dict[str, list[RequestRecord]] = {url: [] for url in urls}
    for r in records:
        if r.endpoint is not None:
            by_url.setdefault(r.endpoint, []).append(r)
    sections = []
    for i, url in enumerate(urls):
        mine = by_url[url]
        summary = summarize(mine, duration=point["duration_s"], slo=slo)
        del summary["concurrency"], summary["request_rate"]
        sections.append(
            {
                "url": url,
                "share": (len(mine) / total) if total else 0.0,
                "marked_down": None if marked_down is None else marked_down[i],
                "down_s": None if down_s is None else down_s[i],
                **summary,
                "server": None,
            }
        )
    point["url"] = None
    point["urls"] = list(urls)
    point["balance"] = BALANCE
    point["endpoints"] = sections


def fill_server(
    point: dict[str, Any],
    before: Sequence[dict[str, float] | None],
    after: Sequence[dict[str, float] | None],
) -> None:
    """Set the point's ``server`` figures from each endpoint's scrape before and after it.

    With one endpoint, ``server`` is its deltas (as before several URLs existed). With several,
    each ``endpoints[i]["server"]`` holds endpoint ``i``'s own deltas and the point's
    ``server`` the deltas of the scrapes summed over the endpoints scraped both times
    (``server_endpoints``: how many of them).
    """
    if len(after) == 1:
        point["server"] = server_deltas(before[0], after[0])
        return
    both = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    for section, b, a in zip(point["endpoints"], before, after, strict=True):
        section["server"] = server_deltas(b, a) if b is not None else None
    point["server"] = (
        server_deltas(sum_scrapes([b for b, _ in both]), sum_scrapes([a for _, a in both]))
        if both
        else None
    )
    point["server_endpoints"] = len(both)
