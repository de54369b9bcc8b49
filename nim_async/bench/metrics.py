"""Per-request records and the statistics the suite reports (pure maths, no IO).

Definitions (all times from ``time.perf_counter``; per request):

- **TTFT**: first token chunk − request sent. A token chunk carries content or reasoning, or
  an empty ``content`` other than the role chunk (vLLM streams a token whose text its
  detokenizer holds back, part of a UTF-8 character, as ``content: ""``); see
  :class:`~nim_async.protocol.stream.StreamAccumulator` ``arrivals``.
- **Time to second token**: second token chunk − request sent.
- **ITL** (inter-token latency): the gaps between consecutive token chunks after the first;
  every gap of every request is one sample.
- **TPOT** (time per output token, as vLLM defines it): ``(e2e − TTFT) / (n − 1)`` with ``n``
  the output tokens (from ``usage``, else the chunk count), for requests with ``n > 1``; one
  sample per request.
- **E2E**: last byte − request sent. **E2E from scheduled start** adds the time the request
  waited on the client before it was sent (client queueing), shown as **queue**.
- **Goodput**: completed requests per second that meet every SLO given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SLO",
    "STAT_KEYS",
    "RequestRecord",
    "parse_slo",
    "percentile",
    "summarize",
    "summarize_values",
]

STAT_KEYS = ("mean", "p50", "p90", "p95", "p99", "std")


@dataclass(slots=True)
class RequestRecord:
    """What one request did, in ``perf_counter`` seconds.

    Attributes:
        index: Sequence number within the load point.
        scheduled_start: When the load generator meant to send it.
        start: When it was sent.
        end: When the response ended (or failed).
        headers_time: When the response headers arrived, when known.
        token_times: Arrival time of each content chunk.
        output_tokens: Completion tokens from ``usage``, when the server sent it.
        prompt_tokens: Prompt tokens from ``usage``, when the server sent it.
        encode_s: Seconds spent loading and encoding the image (before ``scheduled_start``).
        error: Exception type name when the request failed, else ``None``.
        error_message: Its message.
        request_bytes: Size of the request body.
        endpoint: The URL it was sent to, when the run drives several (``--url A --url B``).
    """

    index: int
    scheduled_start: float
    start: float
    end: float = 0.0
    headers_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    encode_s: float = 0.0
    error: str | None = None
    error_message: str | None = None
    request_bytes: int = 0
    endpoint: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the request completed without error."""
        return self.error is None

    @property
    def chunks(self) -> int:
        """Number of content chunks received."""
        return len(self.token_times)

    @property
    def tokens(self) -> int:
        """Output tokens: ``usage.completion_tokens`` when known, else the chunk count."""
        return self.output_tokens if self.output_tokens is not None else self.chunks

    @property
    def ttft(self) -> float | None:
        """Time to first token in seconds, or ``None`` without tokens."""
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def ttst(self) -> float | None:
        """Time to second token in seconds, or ``None`` with fewer than two chunks."""
        return self.token_times[1] - self.start if len(self.token_times) > 1 else None

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content chunks, in seconds."""
        t = self.token_times
        return [t[i] - t[i - 1] for i in range(1, len(t))]

    @property
    def e2e(self) -> float:
        """End-to-end latency from sending, in seconds."""
        return self.end - self.start

    @property
    def e2e_from_scheduled(self) -> float:
        """End-to-end latency from the scheduled start, in seconds (includes client queueing)."""
        return self.end - self.scheduled_start

    @property
    def queue(self) -> float:
        """Seconds the request waited on the client between its scheduled start and sending."""
        return self.start - self.scheduled_start

    @property
    def upload(self) -> float | None:
        """Seconds from sending to the response headers (upload plus server acceptance)."""
        return None if self.headers_time is None else self.headers_time - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token as vLLM defines it, ``(e2e - ttft) / (n - 1)``."""
        ttft = self.ttft
        n = self.tokens
        if ttft is None or n < 2:
            return None
        return (self.e2e - ttft) / (n - 1)

    @property
    def usage_mismatch(self) -> bool:
        """Whether ``usage.completion_tokens`` disagrees with the number of content chunks."""
        return self.ok and self.output_tokens is not None and self.output_tokens != self.chunks

    def to_json(self, origin: float = 0.0) -> dict[str, Any]:
        """Return a JSON-ready dict with times relative to ``origin``, durations in ms."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 4)

        data = asdict(self)
        data.pop("token_times")
        if data["endpoint"] is None:  # one URL: the lines keep the keys they always had
            del data["endpoint"]
        for key in ("scheduled_start", "start", "end"):
            data[key] = round(data[key] - origin, 6)
        data["headers_time"] = (
            None if self.headers_time is None else round(self.headers_time - origin, 6)
        )
        data.update(
            chunks=self.chunks,
            ttft_ms=ms(self.ttft),
            ttst_ms=ms(self.ttst),
            tpot_ms=ms(self.tpot),
            e2e_ms=ms(self.e2e),
            e2e_from_scheduled_ms=ms(self.e2e_from_scheduled),
            queue_ms=ms(self.queue),
            upload_ms=ms(self.upload),
            encode_ms=ms(self.encode_s),
            itl_ms=[round(x * 1000.0, 4) for x in self.itls],
        )
        return data


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0–100) by linear interpolation (numpy's default).

    Args:
        sorted_values: The samples, sorted ascending; at least one.
        q: The percentile, 0–100.
    """
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be within 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize_values(values: Iterable[float], *, scale: float = 1.0) -> dict[str, float | None]:
    """Return ``{mean, p50, p90, p95, p99, std}`` of ``values`` times ``scale``.

    ``std`` is the population standard deviation. Every value is ``None`` when there are no
    samples.
    """
    data = sorted(v * scale for v in values)
    if not data:
        return dict.fromkeys(STAT_KEYS, None)
    n = len(data)
    mean = math.fsum(data) / n
    var = math.fsum((x - mean) ** 2 for x in data) / n
    return {
        "mean": mean,
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "std": math.sqrt(var),
    }


@dataclass(frozen=True, slots=True)
class SLO:
    """Service-level objectives for goodput, in milliseconds (``None`` = not constrained)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        """Whether ``record`` completed and meets every objective set."""
        if not record.ok:
            return False
        if self.ttft_ms is not None:
            ttft = record.ttft
            if ttft is None or ttft * 1000.0 > self.ttft_ms:
                return False
        if self.tpot_ms is not None:
            tpot = record.tpot
            if tpot is not None and tpot * 1000.0 > self.tpot_ms:
                return False
        return self.e2e_ms is None or record.e2e * 1000.0 <= self.e2e_ms

    def as_dict(self) -> dict[str, float]:
        """The objectives that are set."""
        return {
            k: v
            for k, v in (
                ("ttft_ms", self.ttft_ms),
                ("tpot_ms", self.tpot_ms),
                ("e2e_ms", self.e2e_ms),
            )
            if v is not None
        }


def parse_slo(text: str | None) -> SLO:
    """Parse ``"ttft=500,tpot=50,e2e=4000"`` (milliseconds) into an :class:`SLO`.

    Raises:
        ValueError: on an unknown key or a value that is not a positive number.
    """
    if not text:
        return SLO()
    values: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().lower().removesuffix("_ms")
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise ValueError(f"bad SLO {part!r}; use ttft=MS,tpot=MS,e2e=MS")
        try:
            value = float(raw.strip().removesuffix("ms"))
        except ValueError:
            raise ValueError(f"SLO {key} needs a number of milliseconds, got {raw!r}") from None
        if value <= 0:
            raise ValueError(f"SLO {key} must be positive")
        values[f"{key}_ms"] = value
    return SLO(**values)


def summarize(
    records: Sequence[RequestRecord],
    *,
    concurrency: int | None = None,
    request_rate: float | None = None,
    duration: float | None = None,
    slo: SLO | None = None,
) -> dict[str, Any]:
    """Aggregate the measured requests of one load point.

    Args:
        records: The measured requests (warm-up excluded).
        concurrency: The fixed concurrency, when that was the load.
        request_rate: The arrival rate in requests/s, when that was the load.
        duration: Seconds the load point took; by default from the first scheduled start to
            the last end.
        slo: Objectives for goodput; none means every completed request counts.

    Returns:
        A JSON-ready dict with ``concurrency``, ``request_rate``, ``ttft_ms``, ``ttst_ms``,
        ``itl_ms``, ``tpot_ms``, ``e2e_ms``, ``e2e_from_scheduled_ms``, ``queue_ms``,
        ``encode_ms``, ``upload_ms`` (each ``{mean, p50, p90, p95, p99, std}``),
        ``request_throughput``, ``output_token_throughput``, ``goodput``, ``errors``, counts
        and the usage/chunk check.
    """
    slo = slo or SLO()
    ok = [r for r in records if r.ok]
    if duration is None:
        if records:
            duration = max(r.end for r in records) - min(r.scheduled_start for r in records)
        else:
            duration = 0.0
    per_s = (1.0 / duration) if duration > 0 else 0.0
    output_tokens = sum(r.tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    errors = Counter(r.error for r in records if r.error is not None)
    mismatches = [r for r in ok if r.usage_mismatch]
    good = sum(1 for r in ok if slo.met_by(r))
    ms = 1000.0
    return {
        "concurrency": concurrency,
        "request_rate": request_rate,
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "duration_s": duration,
        "ttft_ms": summarize_values((r.ttft for r in ok if r.ttft is not None), scale=ms),
        "ttst_ms": summarize_values((r.ttst for r in ok if r.ttst is not None), scale=ms),
        "itl_ms": summarize_values((x for r in ok for x in r.itls), scale=ms),
        "tpot_ms": summarize_values((r.tpot for r in ok if r.tpot is not None), scale=ms),
        "e2e_ms": summarize_values((r.e2e for r in ok), scale=ms),
        "e2e_from_scheduled_ms": summarize_values((r.e2e_from_scheduled for r in ok), scale=ms),
        "queue_ms": summarize_values((r.queue for r in records), scale=ms),
        "encode_ms": summarize_values((r.encode_s for r in records), scale=ms),
        "upload_ms": summarize_values((r.upload for r in ok if r.upload is not None), scale=ms),
        "request_throughput": len(ok) * per_s,
        "output_token_throughput": output_tokens * per_s,
        "total_token_throughput": (output_tokens + prompt_tokens) * per_s,
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
        "goodput": good * per_s,
        "goodput_fraction": (good / len(records)) if records else 0.0,
        "slo": slo.as_dict(),
        "errors": dict(sorted(errors.items())),
        "usage_chunk_mismatches": len(mismatches),
    }
