"""Prometheus text metrics with vLLM 0.32's names (prefix ``vllm:``) for the emulator. No IO.

Every ``vllm:`` name served is one vLLM 0.32 serves, with its labels (``engine``,
``model_name``); the emulator's own error counter is ``nim_emulator:request_error_total``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["Histogram", "Metrics"]

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


@dataclass(slots=True)
class Histogram:
    """A cumulative Prometheus histogram.

    Attributes:
        buckets: Upper bounds (``+Inf`` is implied).
        counts: Observations per bucket (non-cumulative; last entry is ``+Inf``).
        total: Sum of observations.
        count: Number of observations.
    """

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        """Size the bucket counters."""
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``times`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def render(self, name: str, labels: str) -> list[str]:
        """Return the exposition lines for this histogram."""
        lines: list[str] = []
        cum = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cum += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cum}')
        cum += self.counts[-1]
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {cum}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


@dataclass(slots=True)
class Metrics:
    """Counters and histograms the emulator exposes at ``/v1/metrics``.

    Attributes:
        running: Requests generating now.
        waiting: Requests queued for a sequence slot.
        prompt_tokens: Prompt tokens processed.
        generation_tokens: Tokens generated.
        success: Finished requests by finish reason.
        errors: Rejected or failed requests by HTTP status.
        ttft: Time to first token (seconds), as sent.
        itl: Inter-token latency (seconds), one observation per gap between tokens.
        tpot: Mean time per output token of each request (seconds).
        e2e: End-to-end request latency (seconds).
        queue: Time spent waiting for a slot (seconds).
    """

    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))

    def render(self, model_name: str) -> str:
        """Return the Prometheus text exposition (format 0.0.4)."""
        labels = f'engine="0",model_name="{model_name}"'
        out: list[str] = [
            "# Metrics of the nim-async NIM emulator (a test double, not a model).",
        ]

        def gauge(name: str, kind: str, help_text: str, value: float) -> None:
            out.append(f"# HELP vllm:{name} {help_text}")
            out.append(f"# TYPE vllm:{name} {kind}")
            out.append(f"vllm:{name}{{{labels}}} {value}")

        gauge("num_requests_running", "gauge", "Number of requests running.", self.running)
        gauge("num_requests_waiting", "gauge", "Number of requests waiting.", self.waiting)
        gauge("kv_cache_usage_perc", "gauge", "KV-cache usage; 1 means 100 percent (0 here).", 0.0)
        gauge("prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens)
        gauge(
            "generation_tokens_total",
            "counter",
            "Generation tokens produced.",
            self.generation_tokens,
        )
        out.append("# HELP vllm:request_success_total Finished requests by finish reason.")
        out.append("# TYPE vllm:request_success_total counter")
        for reason in ("stop", "length", "abort"):
            n = self.success.get(reason, 0)
            out.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {n}')
        out.append("# HELP nim_emulator:request_error_total Requests answered with an error.")
        out.append("# TYPE nim_emulator:request_error_total counter")
        for status in sorted(self.errors):
            n = self.errors[status]
            out.append(f'nim_emulator:request_error_total{{{labels},status="{status}"}} {n}')
        for name, hist, help_text in (
            ("time_to_first_token_seconds", self.ttft, "Time to first token."),
            ("request_time_per_output_token_seconds", self.tpot, "Mean time per token."),
            ("inter_token_latency_seconds", self.itl, "Inter-token latency."),
            ("e2e_request_latency_seconds", self.e2e, "End-to-end request latency."),
            ("request_queue_time_seconds", self.queue, "Time spent waiting in the queue."),
        ):
            out.append(f"# HELP vllm:{name} {help_text}")
            out.append(f"# TYPE vllm:{name} histogram")
            out.extend(hist.render(f"vllm:{name}", labels))
        return "\n".join(out) + "\n"
