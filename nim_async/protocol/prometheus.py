"""The Prometheus text exposition, read (no IO): what vLLM and NIM serve at ``/metrics``.

One reader for every place that looks at a server's metrics: the bench's before/after deltas
(:mod:`nim_async.bench.server_metrics`) and a predictor weighing its endpoints by their queue
(:mod:`nim_async.predict.endpoints`).
"""

from __future__ import annotations

import math

__all__ = ["parse_prometheus"]


def parse_prometheus(text: str) -> dict[str, float]:
    """Parse Prometheus text exposition into ``{name: value}``, summed over label sets.

    Comments, blank lines, values that are not numbers and NaN are skipped; a trailing
    timestamp is ignored. A name is whole: ``vllm:num_requests_waiting_total`` is not
    ``vllm:num_requests_waiting``.

    Args:
        text: The body of a ``/metrics`` answer.

    Returns:
        Each metric name (with its ``namespace:`` prefix and any ``_sum`` / ``_count`` /
        ``_bucket`` suffix) to the sum of its values over every label set.
    """
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
