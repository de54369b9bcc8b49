"""One ``--workers`` worker process: its share of the load, streamed back as JSON lines.

A worker is a child ``python -m nim_async.bench --worker-mode`` process started by
:func:`nim_async.bench.workers.run_workers`. It reads its settings as one JSON line on stdin
(the URLs, the model, the load points, the parent's request options and its own ``index`` of
``count``), builds the same request bodies as the parent, and for each load point takes its
share (:func:`share`): it writes ``ready`` after its warm-up, waits for ``go`` on stdin, then
writes one ``rec`` per measured request and ``done`` with its CPU time, event-loop lag samples,
late arrivals, run-queue wait and, with several URLs, how often and how long it had each
endpoint marked down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from nim_async.bench.metrics import RequestRecord

if TYPE_CHECKING:
    from nim_async.bench.client import PreparedRequest
    from nim_async.bench.endpoints import LeastOutstanding
    from nim_async.bench.load import Sender

__all__ = ["share", "worker_main"]


def share(total: int, count: int, index: int) -> int:
    """Worker ``index``'s share of ``total`` split over ``count`` workers (the first get more).

    Args:
        total: What is split (concurrency, requests).
        count: Number of workers.
        index: This worker, ``0 <= index < count``.
    """
    return total // count + (1 if index < total % count else 0)


def _point_shares(load: dict[str, Any], count: int, index: int) -> dict[str, Any] | None:
    """Worker ``index``'s part of one load point, or ``None`` when its share is empty.

    With a fixed concurrency below ``count`` only the first ``concurrency`` workers take part,
    and the requests are split among them.
    """
    part = dict(load)
    active = count
    if load["concurrency"] is not None:
        active = min(count, load["concurrency"])
        if index >= active:
            return None
        part["concurrency"] = share(load["concurrency"], active, index)
    else:
        part["request_rate"] = load["request_rate"] / count
        if load["max_concurrency"] is not None:
            part["max_concurrency"] = max(1, share(load["max_concurrency"], count, index))
    if load["num_requests"] is not None:
        part["num_requests"] = share(load["num_requests"], active, index)
        if part["num_requests"] == 0:
            return None
    part["warmup"] = share(load["warmup"], active, index)
    part["seed"] = load["seed"] + index
    return part


class _StreamingSender:
    """Wraps the bench client: every measured record goes to stdout as a JSON line."""

    def __init__(self, client: Any, point: int) -> None:
        self.client = client
        self.point = point
        self.measuring = False
        self.run_delay: float | None = None

    async def send(self, request: Any, record: RequestRecord) -> RequestRecord:
        result: RequestRecord = await self.client.send(request, record)
        if self.measuring:
            _emit({"t": "rec", "p": self.point, "r": asdict(result)}, flush=False)
        return result


def _run_delay() -> float | None:
    """Seconds this thread has waited on a run queue for a CPU (Linux schedstat), if known."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _emit(event: dict[str, Any], *, flush: bool = True) -> None:
    sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
    if flush:
        sys.stdout.buffer.flush()


async def _readline() -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.readline)


async def _worker(spec: dict[str, Any]) -> None:
    from nim_async.bench.cli import _bodies, _images
    from nim_async.bench.client import BenchClient
    from nim_async.bench.endpoints import LeastOutstanding

    args = argparse.Namespace(**spec["args"])
    images = _images(args)
    bodies = _bodies(args, images, spec["model"])
    count, index = spec["count"], spec["index"]
    pool = max(1, max(share(c, count, index) for c in spec["pools"]))  # this worker's largest share
    clients = [
        BenchClient(
            url,
            max_connections=pool,
            timeout=args.timeout,
            api_key=os.environ.get("NIM_BENCH_API_KEY") or None,
        )
        for url in spec["urls"]
    ]
    balancer = LeastOutstanding(clients) if len(clients) > 1 else None
    client: Sender = balancer if balancer is not None else clients[0]
    _emit({"t": "hello", "pid": os.getpid()})
    try:
        for k, load in enumerate(spec["points"]):
            part = _point_shares(load, count, index)
            if part is None:
                _emit({"t": "ready", "p": k, "skip": True})
                _emit({"t": "done", "p": k, "cpu_s": 0.0, "lag": [], "late": 0, "duration": 0.0})
                continue
            _emit(await _measure(client, balancer, bodies, k, part))
    finally:
        for c in clients:
            await c.aclose()


async def _measure(
    client: Sender,
    balancer: LeastOutstanding | None,
    bodies: Sequence[PreparedRequest],
    k: int,
    part: dict[str, Any],
) -> dict[str, Any]:
    """Run this worker's share ``part`` of point ``k``; the ``done`` event to send."""
    from nim_async.bench.load import LoadSpec, run_load

    sender = _StreamingSender(client, k)
    marks: list[tuple[list[int], list[float]]] = []

    async def barrier() -> None:
        _emit({"t": "ready", "p": k, "skip": False})
        line = await _readline()
        if line.strip() != b"go":
            raise SystemExit(3)
        sender.measuring = True
        sender.run_delay = _run_delay()
        if balancer is not None:
            marks.append(balancer.counters())

    result = await run_load(sender, bodies, LoadSpec(**part), before_measure=barrier)
    sender.measuring = False
    delay_end = _run_delay()
    waited = (
        delay_end - sender.run_delay
        if delay_end is not None and sender.run_delay is not None
        else None
    )
    return {
        "t": "done",
        "p": k,
        "cpu_s": result.cpu_s,
        "lag": result.loop_lag,
        "late": result.late_arrivals,
        "duration": result.duration,
        "cpu_wait_s": waited,
        "downs": balancer.since(marks[0]) if balancer is not None else None,
    }


def worker_main() -> int:
    """Run one worker: settings as a JSON line on stdin, JSON lines on stdout (worker mode)."""
    spec = orjson.loads(sys.stdin.buffer.readline())
    try:
        asyncio.run(_worker(spec))
    except KeyboardInterrupt:
        return 130
    sys.stdout.buffer.flush()
    return 0
