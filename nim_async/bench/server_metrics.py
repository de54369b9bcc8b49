"""Scrape the server's Prometheus metrics before and after a load point.

vLLM and NIM expose ``vllm:``-prefixed metrics at ``/v1/metrics`` (NIM) or ``/metrics``
(vLLM). A name matches with any ``namespace:`` prefix, but whole: ``time_per_output_token``
must not pick up vLLM 0.32's ``request_time_per_output_token`` histogram, which counts
requests, not tokens. :data:`SERVER_METRICS` lists every name read, newest vLLM's first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from nim_async.protocol.prometheus import parse_prometheus

__all__ = [
    "METRIC_PATHS",
    "SERVER_METRICS",
    "parse_prometheus",
    "scrape",
    "server_deltas",
    "sum_scrapes",
]

METRIC_PATHS = ("/v1/metrics", "/metrics")

SERVER_METRICS: dict[str, tuple[str, ...]] = {
    "ttft_ms": ("time_to_first_token_seconds",),
    # vLLM >= 0.11: per-request mean TPOT; before: the per-token histogram under either name
    "tpot_ms": (
        "request_time_per_output_token_seconds",
        "time_per_output_token_seconds",
        "inter_token_latency_seconds",
    ),
    "e2e_ms": ("e2e_request_latency_seconds",),
    "queue_ms": ("request_queue_time_seconds",),
    "generation_tokens": ("generation_tokens_total",),
    "prompt_tokens": ("prompt_tokens_total",),
    "running": ("num_requests_running",),
    "waiting": ("num_requests_waiting",),
}
"""What :func:`server_deltas` reads: each figure's metric names, first found wins (histograms
are read as ``<name>_sum`` / ``<name>_count``; ``requests`` is ``e2e``'s count)."""

GetText = Callable[[str], Awaitable[tuple[int, str]]]


async def scrape(get_text: GetText) -> dict[str, float] | None:
    """Fetch and parse metrics, trying ``/v1/metrics`` then ``/metrics``; ``None`` if neither."""
    for path in METRIC_PATHS:
        status, text = await get_text(path)
        if status == 200 and text:
            parsed = parse_prometheus(text)
            if parsed:
                return parsed
    return None


def sum_scrapes(scrapes: Sequence[dict[str, float]]) -> dict[str, float]:
    """Add several servers' parsed metrics name by name (one service of many endpoints).

    Counters, histogram sums and counts, and gauges add up, so :func:`server_deltas` of two
    summed scrapes gives the service's counts and its pooled means (total sum over total count,
    not an average of the endpoints' means).
    """
    total: dict[str, float] = {}
    for values in scrapes:
        for name, value in values.items():
            total[name] = total.get(name, 0.0) + value
    return total


def _find(values: dict[str, float], wanted: str) -> float | None:
    for name, value in values.items():
        if name == wanted or (name.endswith(wanted) and name[-len(wanted) - 1] == ":"):
            return value
    return None


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    a, b = _find(after, name), _find(before, name)
    if a is None:
        return None
    return a - (b or 0.0)


def _mean_ms(before: dict[str, float], after: dict[str, float], figure: str) -> float | None:
    for base in SERVER_METRICS[figure]:
        total = _delta(before, after, f"{base}_sum")
        count = _delta(before, after, f"{base}_count")
        if total is not None and count:
            return total / count * 1000.0
    return None


def server_deltas(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float | None] | None:
    """Return the server's own figures over a load point (means from histogram deltas).

    Keys: ``ttft_ms``, ``tpot_ms`` (see :data:`SERVER_METRICS` for the names),
    ``e2e_ms``, ``queue_ms``, ``requests``, ``generation_tokens``, ``prompt_tokens``,
    ``running`` and ``waiting`` (gauges after the load point). ``None`` when not scraped.
    """
    if after is None:
        return None
    before = before or {}
    (e2e,) = SERVER_METRICS["e2e_ms"]
    (generated,) = SERVER_METRICS["generation_tokens"]
    (prompt,) = SERVER_METRICS["prompt_tokens"]
    (running,) = SERVER_METRICS["running"]
    (waiting,) = SERVER_METRICS["waiting"]
    return {
        "ttft_ms": _mean_ms(before, after, "ttft_ms"),
        "tpot_ms": _mean_ms(before, after, "tpot_ms"),
        "e2e_ms": _mean_ms(before, after, "e2e_ms"),
        "queue_ms": _mean_ms(before, after, "queue_ms"),
        "requests": _delta(before, after, f"{e2e}_count"),
        "generation_tokens": _delta(before, after, generated),
        "prompt_tokens": _delta(before, after, prompt),
        "running": _find(after, running),
        "waiting": _find(after, waiting),
    }
