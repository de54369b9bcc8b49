"""``--workers N``: the load spread over N processes, merged into one report.

Each worker is a child ``python -m nim_async.bench --worker-mode`` process: a closed loop with
its share of the concurrency (or an open loop with its share of the request rate), of the
request count and of the warm-up. It reads its settings as one JSON line on stdin and streams
JSON lines back on stdout: ``ready`` after its warm-up, one ``rec`` per measured request (the
raw :class:`~nim_async.bench.metrics.RequestRecord`), ``done`` with its CPU time and event-loop
lag samples (the worker's side is :mod:`nim_async.bench.worker_process`). The parent waits
until every worker is warm, then writes ``go`` to all of them, so they measure together;
``time.perf_counter`` is the system-wide monotonic clock on Linux, so the records of all workers
share one time axis and the merged figures are computed from the union of the samples (a merged
p99 is the p99 of all requests, not an average of the workers' p99s).

Each worker runs in a session of its own (see :func:`run_workers`), so that under the kernel's
autogroup scheduling N workers get the CPU share of N processes, not of one.

A worker that dies (killed, or exits with a non-zero status) is reported with its exit status;
the records it streamed before dying are kept and the load point is marked ``partial``.

With several URLs (``--url A --url B``) every worker gets every URL and balances its own share
of the load over them with :class:`~nim_async.bench.endpoints.LeastOutstanding`; the URLs are
not split among the workers. Split, an endpoint's load would be fixed by how many workers it
has (no endpoint could take load from a slower or a dead one, and a dead endpoint would turn
its workers' whole share into errors), the worker count would have to be a multiple of the URL
count, and the processes would no longer be interchangeable. Balanced per worker, the load one
endpoint carries is the sum of what each worker keeps in flight there; each worker favours the
endpoint with the fewest of its own requests outstanding (it does not see the others'
requests, so the balance is per worker, not set-wide). Each record names its endpoint, so the
per-endpoint figures are merged from all workers' samples like the totals, and each worker
reports how often, and how long, it had each endpoint marked down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from nim_async.bench.endpoints import add_endpoint_figures
from nim_async.bench.metrics import SLO, RequestRecord, summarize, summarize_values
from nim_async.bench.worker_process import share, worker_main

__all__ = [
    "CPU_BUSY_BOUND",
    "WORKER_ARGS",
    "WorkerProcess",
    "describe_exit",
    "merge_point",
    "run_workers",
    "share",
    "worker_main",
]

CPU_BUSY_BOUND = 0.9
"""A worker whose thread was on a CPU, or runnable and waiting for one (Linux schedstat), this
fraction of the measured phase or more was the bottleneck itself (its event loop had no idle
time left)."""

WORKER_ARGS = (
    "task",
    "prompt",
    "timeout",
    "max_tokens",
    "no_ignore_eos",
    "seed",
    "image_dir",
    "image_sizes",
    "num_images",
    "image_noise",
)
"""The parsed options a worker needs to build the same request bodies as the parent."""

_LINE_LIMIT = 64 * 1024 * 1024


def describe_exit(status: int | None) -> str:
    """A worker's exit status in words (``killed by SIGKILL (exit status -9)``)."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name} (exit status {status})"
    return f"exited with status {status}"


@dataclass
class WorkerProcess:
    """One worker as the parent sees it.

    Attributes:
        index: Its number, from 0.
        proc: The child process.
        pid: Its process id.
        exit_status: Its exit status once it has ended (negative: killed by that signal).
        died_at_point: The load point during which it ended without finishing, if any.
        stderr_tail: The end of what it wrote to stderr.
    """

    index: int
    proc: asyncio.subprocess.Process
    pid: int
    exit_status: int | None = None
    died_at_point: int | None = None
    stderr_tail: bytes = b""
    events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    alive: bool = True

    async def next_event(self) -> dict[str, Any] | None:
        """The next event it streamed, or ``None`` once its stdout closed (it ended)."""
        if not self.alive:
            return None
        event = await self.events.get()
        if event is None:
            self.alive = False
            self.exit_status = await self.proc.wait()
        return event

    def send(self, line: bytes) -> None:
        """Write a line to its stdin, ignoring a worker that is gone."""
        stdin = self.proc.stdin
        if stdin is None or not self.alive:
            return
        with contextlib.suppress(OSError, RuntimeError):
            stdin.write(line)


async def _pump(worker: WorkerProcess) -> None:
    stdout = worker.proc.stdout
    assert stdout is not None
    while True:
        try:
            line = await stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            break
        if not line:
            break
        with contextlib.suppress(orjson.JSONDecodeError):
            worker.events.put_nowait(orjson.loads(line))
    worker.events.put_nowait(None)


async def _drain_stderr(worker: WorkerProcess) -> None:
    stderr = worker.proc.stderr
    assert stderr is not None
    while chunk := await stderr.read(4096):
        worker.stderr_tail = (worker.stderr_tail + chunk)[-2000:]


def _worker_figures(
    worker: WorkerProcess,
    records: Sequence[RequestRecord],
    done: dict[str, Any] | None,
    ceiling: float | None,
    headroom_bound: float,
) -> dict[str, Any]:
    """One worker's own figures and its self-check (was it the bottleneck?)."""
    ok_tokens = sum(r.tokens for r in records if r.ok)
    duration = float(done["duration"]) if done else 0.0
    if not duration and records:
        duration = max(r.end for r in records) - min(r.scheduled_start for r in records)
    rate = ok_tokens / duration if duration > 0 else 0.0
    cpu_s = float(done["cpu_s"]) if done else None
    lag = [float(x) for x in done["lag"]] if done else []
    busy = (cpu_s / duration) if cpu_s is not None and duration > 0 else None
    wait_s = done.get("cpu_wait_s") if done else None
    waiting = (float(wait_s) / duration) if wait_s is not None and duration > 0 else None
    # on a shared machine a saturated client is not always on a CPU: it also waits for one
    wanted = None if busy is None else busy + (waiting or 0.0)
    headroom = (ceiling / rate) if ceiling is not None and rate > 0 else None
    bound = None
    if busy is not None or headroom is not None:
        bound = bool(
            (wanted is not None and wanted >= CPU_BUSY_BOUND)
            or (headroom is not None and headroom < headroom_bound)
        )
    lag_stats = summarize_values(lag, scale=1000.0)
    return {
        "index": worker.index,
        "pid": worker.pid,
        "num_requests": len(records),
        "completed": sum(1 for r in records if r.ok),
        "output_tokens": ok_tokens,
        "output_token_throughput": rate,
        "cpu_s": cpu_s,
        "cpu_busy": busy,
        "cpu_wait": waiting,
        "cpu_us_per_token": (cpu_s / ok_tokens * 1e6) if cpu_s is not None and ok_tokens else None,
        "loop_lag_ms": {"p50": lag_stats["p50"], "p99": lag_stats["p99"]},
        "headroom": headroom,
        "client_bound": bound,
        "exit_status": worker.exit_status if done is None else None,
        "status": "ok" if done is not None else describe_exit(worker.exit_status),
    }


def merge_point(
    per_worker: Sequence[Sequence[RequestRecord]],
    *,
    concurrency: int | None,
    request_rate: float | None,
    slo: SLO | None = None,
) -> dict[str, Any]:
    """Merge the workers' records of one load point into one summary.

    Every statistic comes from the union of all workers' samples (the same clock), and the
    throughput from the first scheduled start to the last end over all of them.

    Args:
        per_worker: Each worker's measured records.
        concurrency: The point's total concurrency, when that was the load.
        request_rate: The point's total request rate, when that was the load.
        slo: Goodput objectives.

    Returns:
        What :func:`~nim_async.bench.metrics.summarize` returns for the union.
    """
    records = [r for rs in per_worker for r in rs]
    duration = (
        max(r.end for r in records) - min(r.scheduled_start for r in records) if records else 0.0
    )
    return summarize(
        records,
        concurrency=concurrency,
        request_rate=request_rate,
        duration=duration,
        slo=slo,
    )


async def _start(index: int, spec: dict[str, Any], api_key: str | None) -> WorkerProcess:
    env = dict(os.environ)
    env.pop("NIM_BENCH_API_KEY", None)
    if api_key:
        env["NIM_BENCH_API_KEY"] = api_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nim_async.bench",
        "--worker-mode",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        limit=_LINE_LIMIT,
        # Each worker in a session of its own: with the kernel's autogroup scheduling (on by
        # default on desktop and many server kernels) all processes of one session share one
        # fair share of the CPUs, so N workers in the parent's session would compete for the
        # CPU time of one process against other sessions (measured on a shared 2-core machine:
        # 0.51-0.55x the tokens/s of one worker in the same session, 1.40-1.48x in their own).
        start_new_session=True,
    )
    worker = WorkerProcess(index=index, proc=proc, pid=proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps({**spec, "index": index}) + b"\n")
    return worker


async def run_workers(
    args: argparse.Namespace,
    urls: str | Sequence[str],
    model: str,
    loads: Sequence[dict[str, Any]],
    *,
    count: int,
    ceiling: float | None,
    headroom_bound: float,
    slo: SLO | None = None,
    scrape_before: Callable[[], Any] | None = None,
    scrape_after: Callable[[Any, dict[str, Any]], Awaitable[None]] | None = None,
    on_ready: Callable[[int, Sequence[WorkerProcess]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], RequestRecord, float]]]:
    """Run the load points over ``count`` worker processes and merge their results.

    Args:
        args: The parsed options (the image and body options go to the workers).
        urls: The server, or several endpoints driven as one service (each worker gets all
            of them and balances its share over them).
        model: The served model name.
        loads: One dict per load point: ``concurrency``, ``request_rate``, ``arrival``,
            ``burstiness``, ``max_concurrency``, ``num_requests``, ``duration``, ``warmup``,
            ``seed`` (totals; each worker takes its share).
        count: Number of workers.
        ceiling: One client process's output-token ceiling (the self-check), if measured.
        headroom_bound: A worker whose ceiling is within this factor of its rate is marked
            client-bound.
        slo: Goodput objectives.
        scrape_before: Awaitable factory run when all workers are warm (server metrics).
        scrape_after: Awaited after each point with ``scrape_before``'s result and the merged
            point, whose server figures it fills in.
        on_ready: Called when every worker is warm at a point, before they start measuring
            (with the point's index and the workers).

    Returns:
        The merged load points (each with a ``workers`` list and ``partial``; with several URLs
        also ``urls``, ``balance`` and ``endpoints``, see
        :func:`~nim_async.bench.endpoints.add_endpoint_figures`) and every request record with
        its labels, as the single-process run returns them.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("no URL to send to")
    spec = {
        "urls": urls,
        "model": model,
        "count": count,
        "points": list(loads),
        "pools": [load["concurrency"] or load["max_concurrency"] or 256 for load in loads],
        "args": {name: getattr(args, name) for name in WORKER_ARGS},
    }
    workers = [await _start(i, spec, getattr(args, "api_key", None)) for i in range(count)]
    tasks = [asyncio.create_task(job(w)) for job in (_pump, _drain_stderr) for w in workers]
    points: list[dict[str, Any]] = []
    all_records: list[tuple[dict[str, Any], RequestRecord, float]] = []
    try:
        for w in workers:
            if await w.next_event() is None:
                w.died_at_point = 0
        run = _PointRun(
            workers, urls, slo, ceiling, headroom_bound, scrape_before, scrape_after, on_ready
        )
        for k, load in enumerate(loads):
            point, per_worker, origin = await run.point(k, load)
            points.append(point)
            for w in workers:
                labels = {
                    "concurrency": load["concurrency"],
                    "request_rate": load["request_rate"],
                    "worker": w.index,
                }
                all_records.extend((labels, r, origin) for r in per_worker[w.index])
    except BaseException:
        # interrupted (Ctrl-C reaches only the parent: the workers have sessions of their own)
        for w in workers:
            if w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.terminate()
        raise
    finally:
        await _reap(workers, tasks)
    _mark_dead(workers, points)
    return points, all_records


async def _until_ready(worker: WorkerProcess, k: int) -> bool:
    """Wait for ``worker``'s warm-up at point ``k``; whether it takes part (no share: it skips)."""
    while (event := await worker.next_event()) is not None:
        if event.get("t") == "ready" and event.get("p") == k:
            return not event.get("skip")
    if worker.died_at_point is None:
        worker.died_at_point = k
    return False


async def _collect(
    worker: WorkerProcess, k: int
) -> tuple[list[RequestRecord], dict[str, Any] | None]:
    """``worker``'s records of point ``k`` and its ``done`` event (``None``: it died first)."""
    records: list[RequestRecord] = []
    while (event := await worker.next_event()) is not None:
        kind = event.get("t")
        if kind == "rec" and event.get("p") == k:
            records.append(RequestRecord(**event["r"]))
        elif kind == "done" and event.get("p") == k:
            return records, event
    if worker.died_at_point is None:
        worker.died_at_point = k
    return records, None


@dataclass(frozen=True)
class _PointRun:
    """What every load point of :func:`run_workers` shares (see its arguments)."""

    workers: Sequence[WorkerProcess]
    urls: Sequence[str]
    slo: SLO | None
    ceiling: float | None
    headroom_bound: float
    scrape_before: Callable[[], Any] | None
    scrape_after: Callable[[Any, dict[str, Any]], Awaitable[None]] | None
    on_ready: Callable[[int, Sequence[WorkerProcess]], None] | None

    async def point(
        self, k: int, load: dict[str, Any]
    ) -> tuple[dict[str, Any], list[list[RequestRecord]], float]:
        """Load point ``k`` over all workers: warm, ``go``, collect, merge, scrape.

        Returns:
            The merged point, each worker's records and the time ``go`` was sent.
        """
        workers = self.workers
        taking_part = await asyncio.gather(*(_until_ready(w, k) for w in workers))
        if self.on_ready is not None:
            self.on_ready(k, workers)
        before = await self.scrape_before() if self.scrape_before is not None else None
        origin = time.perf_counter()
        for w, part in zip(workers, taking_part, strict=True):
            if part:  # a worker that skips this point does not wait for "go"
                w.send(b"go\n")
        collected = await asyncio.gather(*(_collect(w, k) for w in workers))
        per_worker = [records for records, _ in collected]
        dones = [done for _, done in collected]
        point = self._merge(load, per_worker, dones)
        if self.scrape_after is not None:
            await self.scrape_after(before, point)
        return point, per_worker, origin

    def _merge(
        self,
        load: dict[str, Any],
        per_worker: list[list[RequestRecord]],
        dones: list[dict[str, Any] | None],
    ) -> dict[str, Any]:
        slo, urls = self.slo, self.urls
        point = merge_point(
            per_worker, concurrency=load["concurrency"], request_rate=load["request_rate"], slo=slo
        )
        figures = [
            _worker_figures(
                w, per_worker[w.index], dones[w.index], self.ceiling, self.headroom_bound
            )
            for w in self.workers
        ]
        point["client"] = _client_figures(figures, dones, point["output_tokens"], self.ceiling)
        point["workers"] = figures
        point["num_workers"] = len(self.workers)
        point["partial"] = any(f["status"] != "ok" for f in figures)
        if len(urls) > 1:
            times, seconds = _endpoint_downs(dones, len(urls))
            records = [r for rs in per_worker for r in rs]
            add_endpoint_figures(point, records, urls, slo=slo, marked_down=times, down_s=seconds)
        return point


def _client_figures(
    figures: Sequence[dict[str, Any]],
    dones: Sequence[dict[str, Any] | None],
    tokens: int,
    ceiling: float | None,
) -> dict[str, Any]:
    """The client side of a merged point: CPU, loop lag, late arrivals, the self-check."""
    cpu = [f["cpu_s"] for f in figures if f["cpu_s"] is not None]
    lag = [float(x) for d in dones if d for x in d["lag"]]
    lag_stats = summarize_values(lag, scale=1000.0)
    headrooms = [f["headroom"] for f in figures if f["headroom"] is not None]
    bounds = [f["client_bound"] for f in figures if f["client_bound"] is not None]
    return {
        "cpu_s": sum(cpu),
        "cpu_us_per_token": (sum(cpu) / tokens * 1e6) if tokens else None,
        "loop_lag_ms": {
            "p50": lag_stats["p50"],
            "p99": lag_stats["p99"],
            "max": max(lag) * 1000.0 if lag else None,
        },
        "late_arrivals": sum(int(d["late"]) for d in dones if d),
        "ceiling_tokens_per_s": ceiling,
        "headroom": min(headrooms) if headrooms else None,
        "client_bound": any(bounds) if bounds else None,
    }


def _endpoint_downs(
    dones: Sequence[dict[str, Any] | None], count: int
) -> tuple[list[int], list[float]]:
    """How often any worker marked each endpoint down (summed) and for how long (the longest)."""
    times, seconds = [0] * count, [0.0] * count
    for d in dones:
        marked, down = (d or {}).get("downs") or ([], [])
        for i, n in enumerate(marked):
            times[i] += int(n)
        for i, x in enumerate(down):
            seconds[i] = max(seconds[i], float(x))
    return times, seconds


async def _reap(workers: Sequence[WorkerProcess], tasks: Sequence[asyncio.Task[None]]) -> None:
    """Close the workers' stdin, wait for them to end (kill after 10 s) and for their readers."""
    for w in workers:
        stdin = w.proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()
    for w in workers:
        try:
            await asyncio.wait_for(w.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()
        if w.exit_status is None:
            w.exit_status = w.proc.returncode
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)


def _mark_dead(workers: Sequence[WorkerProcess], points: list[dict[str, Any]]) -> None:
    """Put a failed worker's exit status and stderr on the point it died at (``partial``)."""
    for w in workers:
        if points and w.exit_status not in (0, None):
            point = (
                points[-1]
                if w.died_at_point is None
                else points[min(w.died_at_point, len(points) - 1)]
            )
            figures = point["workers"][w.index]
            figures["exit_status"] = w.exit_status
            figures["status"] = describe_exit(w.exit_status)
            tail = w.stderr_tail.decode(errors="replace").strip().splitlines()
            figures["stderr_tail"] = tail[-1][-300:] if tail else ""
            point["partial"] = True
