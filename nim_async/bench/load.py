"""Load generation: fixed concurrency or an arrival rate, with warm-up and limits.

- **Fixed concurrency**: ``concurrency`` workers each send the next request as soon as their
  previous one ends (closed loop).
- **Request rate**: an open loop; gaps between arrivals are exponential (Poisson), gamma with
  shape ``burstiness`` (below 1 is burstier than Poisson, above 1 smoother; vLLM's convention)
  or constant. When the generator falls behind (a busy event loop), the schedule restarts from
  the present instead of firing a burst to catch up; such arrivals are counted as ``late``.
  ``max_concurrency`` caps requests in flight; waiting for a slot shows as client queueing
  (latency from the scheduled start).
- Warm-up requests run first and are not measured (a closed loop at the point's concurrency, or
  at ``max_concurrency`` (8 if unset) for a rate). The measured phase ends
  after ``num_requests`` requests or ``duration`` seconds of scheduling, whichever comes first;
  requests in flight then complete and count.

While measuring, the event loop's lag (how late a 5 ms timer fires) and the CPU time of the
client's thread are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from nim_async.bench.client import PreparedRequest
from nim_async.bench.metrics import RequestRecord

__all__ = [
    "Arrival",
    "LoadResult",
    "LoadSpec",
    "LoopLagMonitor",
    "Sender",
    "arrival_gaps",
    "run_load",
]

Arrival = Literal["poisson", "gamma", "constant"]


class Sender(Protocol):
    """Anything that sends a prepared request and fills its record (the bench client)."""

    async def send(self, request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send ``request``; set ``record.start``, timings and error; never raise."""
        ...


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load point.

    Attributes:
        concurrency: Fixed number of requests in flight (closed loop).
        request_rate: Arrivals per second (open loop); used when ``concurrency`` is ``None``.
        arrival: Gap distribution for ``request_rate``.
        burstiness: Gamma shape for ``arrival="gamma"`` (1.0 equals Poisson).
        max_concurrency: Cap on requests in flight for ``request_rate`` (``None`` = no cap).
        num_requests: Measured requests (``None`` = limited by ``duration`` only).
        duration: Seconds to keep scheduling (``None`` = limited by ``num_requests`` only).
        warmup: Unmeasured requests sent first.
        seed: Seed for the arrival gaps and the image order.
    """

    concurrency: int | None = None
    request_rate: float | None = None
    arrival: Arrival = "poisson"
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_requests: int | None = 100
    duration: float | None = None
    warmup: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give exactly one of concurrency and request_rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError("request_rate must be positive")
        if self.num_requests is None and self.duration is None:
            raise ValueError("give num_requests or duration (or both)")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("num_requests must be at least 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be positive")
        if self.burstiness <= 0:
            raise ValueError("burstiness must be positive")


@dataclass(slots=True)
class LoadResult:
    """What the measured phase of one load point produced.

    Attributes:
        records: One record per measured request, in sending order.
        duration: Seconds from the first scheduled start to the last end.
        origin: ``perf_counter`` at the start of the measured phase.
        cpu_s: CPU seconds the client's thread spent in the measured phase.
        loop_lag: Event-loop lag samples in seconds.
        late_arrivals: Arrivals the generator could not send on time (schedule restarted).
    """

    records: list[RequestRecord]
    duration: float
    origin: float
    cpu_s: float
    loop_lag: list[float] = field(default_factory=list)
    late_arrivals: int = 0


def arrival_gaps(rate: float, arrival: Arrival, burstiness: float, rng: random.Random) -> float:
    """Draw one gap (seconds) between arrivals with mean ``1 / rate``."""
    if arrival == "constant":
        return 1.0 / rate
    if arrival == "poisson":
        return rng.expovariate(rate)
    return rng.gammavariate(burstiness, 1.0 / (rate * burstiness))


class LoopLagMonitor:
    """Measures how late a periodic timer fires on the running event loop."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        perf = time.perf_counter
        while True:
            t = perf()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, perf() - t - self.interval))

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[float]:
        """Stop sampling and return the samples (seconds)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.samples


async def _closed_loop(
    sender: Sender,
    requests: Sequence[PreparedRequest],
    concurrency: int,
    num_requests: int | None,
    deadline: float | None,
    order: list[int],
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    counter = 0
    perf = time.perf_counter

    async def worker() -> None:
        nonlocal counter
        while True:
            if num_requests is not None and counter >= num_requests:
                return
            now = perf()
            if deadline is not None and now >= deadline:
                return
            index = counter
            counter += 1
            record = RequestRecord(index=index, scheduled_start=now, start=now)
            records.append(record)
            await sender.send(requests[order[index % len(order)]], record)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def _open_loop(
    sender: Sender,
    requests: Sequence[PreparedRequest],
    spec: LoadSpec,
    num_requests: int | None,
    deadline: float | None,
    order: list[int],
    rng: random.Random,
) -> tuple[list[RequestRecord], int]:
    assert spec.request_rate is not None
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task[RequestRecord]] = set()
    slots = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
    perf = time.perf_counter
    late = 0

    async def one(request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        if slots is None:
            return await sender.send(request, record)
        async with slots:
            return await sender.send(request, record)

    planned = perf()
    index = 0
    while num_requests is None or index < num_requests:
        if index:
            planned += arrival_gaps(spec.request_rate, spec.arrival, spec.burstiness, rng)
        if deadline is not None and planned >= deadline:
            break
        now = perf()
        if planned > now:
            await asyncio.sleep(planned - now)
        elif now - planned > 0.001:
            late += 1
            planned = now  # no catch-up: restart the schedule from the present
        record = RequestRecord(index=index, scheduled_start=planned, start=planned)
        records.append(record)
        task = asyncio.get_running_loop().create_task(
            one(requests[order[index % len(order)]], record)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    if tasks:
        await asyncio.gather(*tasks)
    return records, late


async def run_load(
    sender: Sender,
    requests: Sequence[PreparedRequest],
    spec: LoadSpec,
    *,
    before_measure: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """Run one load point: warm-up, then the measured phase.

    Args:
        sender: Sends one prepared request (a :class:`~nim_async.bench.client.BenchClient`).
        requests: Prepared bodies, used in a seeded shuffled order, cycling.
        spec: The load point.
        before_measure: Awaited after the warm-up, before the measured phase starts (the
            ``--workers`` barrier: every worker starts measuring together).

    Returns:
        The measured records and the client-side measurements.
    """
    if not requests:
        raise ValueError("no requests to send")
    rng = random.Random(spec.seed)
    order = list(range(len(requests)))
    rng.shuffle(order)
    if spec.warmup:
        await _closed_loop(
            sender,
            requests,
            spec.concurrency or spec.max_concurrency or 8,
            spec.warmup,
            None,
            order,
        )
    if before_measure is not None:
        await before_measure()
    monitor = LoopLagMonitor()
    monitor.start()
    cpu0 = time.thread_time()
    origin = time.perf_counter()
    deadline = origin + spec.duration if spec.duration is not None else None
    late = 0
    if spec.concurrency is not None:
        records = await _closed_loop(
            sender, requests, spec.concurrency, spec.num_requests, deadline, order
        )
    else:
        records, late = await _open_loop(
            sender, requests, spec, spec.num_requests, deadline, order, rng
        )
    cpu_s = time.thread_time() - cpu0
    lag = await monitor.stop()
    duration = (
        max(r.end for r in records) - min(r.scheduled_start for r in records) if records else 0.0
    )
    return LoadResult(
        records=records,
        duration=duration,
        origin=origin,
        cpu_s=cpu_s,
        loop_lag=lag,
        late_arrivals=late,
    )
