"""Throughput over two equal replicas against one, measured in the same run (issue 17).

Two emulator replicas (a test double, not a model), each in its own process
(``nim_async.bench.emulator_proc``), with a fixed time per token (``--itl-ms``), a time to
first token and a cap on sequences generated at once (``--max-num-seqs``), so each server, not
the client, is the bottleneck: one replica finishes at most ``max_num_seqs`` requests per
answer time, and the client keeps more than both replicas' capacity in flight. The client is
one ``AsyncNIMPredictor`` and ``predict_many`` with ``--concurrency`` requests in flight:

* **one**: ``AsyncNIMPredictor(base_url=replica_a)`` (the one-server path);
* **two**: ``AsyncNIMPredictor(endpoints=[replica_a, replica_b])`` (least outstanding).

Each round measures one, then two (the order alternates between rounds, so drift in the
machine's load hits both alike), each after a warm-up of ``concurrency`` requests, as
``requests / wall time``. The goal: two replicas' throughput is at least 1.8x one replica's
(median of the rounds' ratios). Each replica's share of the two-replica run is read from its
own ``/v1/metrics`` (``vllm:request_success_total``).

    .venv/bin/python benchmarks/replicas.py --quick     # one round, ~20 s
    .venv/bin/python benchmarks/replicas.py             # three rounds, more requests
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
import urllib.request
from typing import Any

from PIL import Image

from nim_async.bench.emulator_proc import EmulatorProcess
from nim_async.predict.batch import predict_many
from nim_async.predict.predictor import AsyncNIMPredictor

GOAL = 1.8
MODEL = "cosmos-reason1-7b"


def image() -> bytes:
    """A small image (the emulator's Pillow work per request stays small)."""
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def served(url: str) -> int:
    """Requests an emulator finished, from its own /v1/metrics."""
    with urllib.request.urlopen(f"{url}/v1/metrics", None, 10) as answer:
        text = answer.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total") and "abort" not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def throughput(
    urls: list[str], requests: int, concurrency: int, data: bytes
) -> tuple[float, float]:
    """(requests per second, CPU seconds of this process per request) over ``urls``."""
    target: dict[str, Any] = {"base_url": urls[0]} if len(urls) == 1 else {"endpoints": urls}
    async with AsyncNIMPredictor(
        MODEL, "vqa", max_connections=concurrency, dialect="openai", **target
    ) as predictor:
        warm = [
            r async for r in predict_many(predictor, [data] * concurrency, concurrency=concurrency)
        ]
        if not all(r.ok for r in warm):
            raise SystemExit(f"warm-up failed: {next(r.error for r in warm if not r.ok)}")
        cpu = time.process_time()
        started = time.perf_counter()
        results = [
            r async for r in predict_many(predictor, [data] * requests, concurrency=concurrency)
        ]
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0].error}")
    return requests / elapsed, cpu / requests


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 quick)")
    parser.add_argument("--requests", type=int, default=None, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--itl-ms", type=float, default=20.0, help="per-token delay")
    parser.add_argument("--ttft-ms", type=float, default=40.0)
    parser.add_argument("--max-num-seqs", type=int, default=4, help="sequences per replica")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    requests = args.requests or (64 if args.quick else 160)
    settings = {
        "itl_ms": args.itl_ms,
        "ttft_ms": args.ttft_ms,
        "max_num_seqs": args.max_num_seqs,
    }
    data = image()
    print(
        f"replicas: emulator processes (a test double, not a model) itl={args.itl_ms:g} ms "
        f"ttft={args.ttft_ms:g} ms max_num_seqs={args.max_num_seqs}; client concurrency "
        f"{args.concurrency}, {requests} requests per measurement, {rounds} round(s); "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    ratios: list[float] = []
    async with EmulatorProcess(settings) as a, EmulatorProcess(settings) as b:
        for number in range(rounds):
            order = ("one", "two") if number % 2 == 0 else ("two", "one")
            rate: dict[str, float] = {}
            for kind in order:
                urls = [a.url] if kind == "one" else [a.url, b.url]
                before = [served(u) for u in (a.url, b.url)]
                rate[kind], cpu = await throughput(urls, requests, args.concurrency, data)
                shares = [served(u) - n for u, n in zip((a.url, b.url), before, strict=True)]
                print(
                    f"  round {number + 1} {kind} replica(s): {rate[kind]:6.2f} req/s  "
                    f"client CPU {cpu * 1e3:.2f} ms/request  served by a/b (warm-up included): "
                    f"{shares[0]}/{shares[1]}"
                )
            ratios.append(rate["two"] / rate["one"])
            print(f"  round {number + 1} ratio two/one: {ratios[-1]:.2f}x")
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= GOAL else "FAIL"
    print(
        f"two replicas vs one: {ratio:.2f}x throughput (median of {rounds} round(s): "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); goal >= {GOAL}x: {verdict}; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
