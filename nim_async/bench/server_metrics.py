"""Scrape the server's Prometheus metrics before and after a load point.

vLLM and NIM expose ``vllm:``-prefixed metrics at ``/v1/metrics`` (NIM) or ``/metrics``
(vLLM). Names are matched by suffix, so a different prefix still works.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

__all__ = ["METRIC_PATHS", "parse_prometheus", "scrape", "server_deltas"]

METRIC_PATHS = ("/v1/metrics", "/metrics")

GetText = Callable[[str], Awaitable[tuple[int, str]]]


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse Prometheus text exposition into ``{name: value}``, summed over labels."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            _, _, rest = rest.rpartition("}")
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        values[name] = values.get(name, 0.0) + value
    return values


async def scrape(get_text: GetText) -> dict[str, float] | None:
    """Fetch and parse metrics, trying ``/v1/metrics`` then ``/metrics``; ``None`` if neither."""
    for path in METRIC_PATHS:
        status, text = await get_text(path)
        if status == 200 and text:
            parsed = parse_prometheus(text)
            if parsed:
                return parsed
    return None


def _find(values: dict[str, float], suffix: str) -> float | None:
    for name, value in values.items():
        if name.endswith(suffix):
            return value
    return None


def _delta(before: dict[str, float], after: dict[str, float], suffix: str) -> float | None:
    a, b = _find(after, suffix), _find(before, suffix)
    if a is None:
        return None
    return a - (b or 0.0)


def _mean_ms(before: dict[str, float], after: dict[str, float], base: str) -> float | None:
    total = _delta(before, after, f"{base}_sum")
    count = _delta(before, after, f"{base}_count")
    if total is None or not count:
        return None
    return total / count * 1000.0


def server_deltas(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float | None] | None:
    """Return the server's own figures over a load point (means from histogram deltas).

    Keys: ``ttft_ms``, ``tpot_ms`` (``time_per_output_token`` or ``inter_token_latency``),
    ``e2e_ms``, ``queue_ms``, ``requests``, ``generation_tokens``, ``prompt_tokens``,
    ``running`` and ``waiting`` (gauges after the load point). ``None`` when not scraped.
    """
    if after is None:
        return None
    before = before or {}
    tpot = _mean_ms(before, after, "time_per_output_token_seconds")
    if tpot is None:
        tpot = _mean_ms(before, after, "inter_token_latency_seconds")
    return {
        "ttft_ms": _mean_ms(before, after, "time_to_first_token_seconds"),
        "tpot_ms": tpot,
        "e2e_ms": _mean_ms(before, after, "e2e_request_latency_seconds"),
        "queue_ms": _mean_ms(before, after, "request_queue_time_seconds"),
        "requests": _delta(before, after, "e2e_request_latency_seconds_count"),
        "generation_tokens": _delta(before, after, "generation_tokens_total"),
        "prompt_tokens": _delta(before, after, "prompt_tokens_total"),
        "running": _find(after, "num_requests_running"),
        "waiting": _find(after, "num_requests_waiting"),
    }
