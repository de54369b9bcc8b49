"""Memory of predict_many: 10,000 inputs with flat peak RSS.

Feeds a lazy generator of N inputs through ``predict_many`` against the in-process emulator (a
test double, not a model) and reports the process's peak RSS after the first 1,000 results and
after all N. Flat means the 10k peak stays within a few MB of the 1k peak: nothing grows per
input (sources are pulled lazily, results are dropped as they are consumed).

For contrast it also reports the size of what a naive batch holds: all N results kept in a list
(measured as RSS growth in a second phase), so the figure is read against a peer measured in the
same run.

``--blocking`` runs the N inputs through the blocking facade instead
(``NIMPredictor.predict_many``, a plain generator fed from the loop thread through a bounded
channel); run it as its own process so its peak RSS is its own.

    .venv/bin/python benchmarks/batch_memory.py              # 10,000 inputs, async
    .venv/bin/python benchmarks/batch_memory.py --blocking   # the same, blocking facade
    .venv/bin/python benchmarks/batch_memory.py --quick      # 2,000 inputs (as --n 2000)
    .venv/bin/python benchmarks/batch_memory.py --quick --blocking
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import resource
import sys
import time
from collections.abc import Iterator

import orjson
from PIL import Image, ImageDraw

from nim_async.emulator import Emulator, EmulatorSettings
from nim_async.predict.batch import BatchResult, predict_many
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.sync.predictor import NIMPredictor


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def images(n: int) -> Iterator[bytes]:
    """N inputs, made one at a time (a generator: never a list of N)."""
    for i in range(n):
        image = Image.new("RGB", (96, 64), "white")
        draw = ImageDraw.Draw(image)
        draw.rectangle((4 + i % 40, 8, 40 + i % 40, 50), fill=(200, 30, 30))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield buffer.getvalue()


class Meter:
    """Counts results and takes the RSS marks at 1,000 and at the end (shared by both modes)."""

    def __init__(self, marks: dict[str, float]) -> None:
        self.marks = marks
        self.start = time.perf_counter()
        self.done = self.failed = 0

    def observe(self, result: BatchResult) -> None:
        self.done += 1
        self.failed += not result.ok
        orjson.dumps(result.response.plain_result if result.response else None)
        if self.done == 1000:
            gc.collect()
            self.marks["peak_1k_mb"] = peak_rss_mb()
            self.marks["rss_1k_mb"] = current_rss_mb()
            self.marks["t_1k_s"] = time.perf_counter() - self.start

    def end(self) -> None:
        gc.collect()
        self.marks["peak_all_mb"] = peak_rss_mb()
        self.marks["rss_all_mb"] = current_rss_mb()
        self.marks["seconds"] = time.perf_counter() - self.start
        self.marks["failed"] = self.failed
        self.marks["done"] = self.done


def consume_blocking(url: str, n: int, concurrency: int, marks: dict[str, float]) -> None:
    """The measured phase through the blocking facade (runs in a worker thread)."""
    meter = Meter(marks)
    with NIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=url) as predictor:
        for result in predictor.predict_many(
            images(n), concurrency=concurrency, user_prompt="How many shapes are there?"
        ):
            meter.observe(result)
    meter.end()


async def run(n: int, concurrency: int, blocking: bool = False) -> dict[str, float]:
    marks: dict[str, float] = {}
    settings = EmulatorSettings(ttft_ms=0.0, itl_ms=0.0)
    async with (
        Emulator(settings, host="127.0.0.1", port=0) as emu,
        AsyncNIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=emu.url) as predictor,
    ):
        if blocking:
            await asyncio.to_thread(consume_blocking, emu.url, n, concurrency, marks)
        else:
            await consume_async(predictor, n, concurrency, marks)

        # Peer, same run: keep every result (what a list-collecting batch would hold).
        before = current_rss_mb()
        kept = [r async for r in predict_many(predictor, images(n // 5), concurrency=concurrency)]
        gc.collect()
        marks["kept_per_1k_mb"] = (current_rss_mb() - before) / (len(kept) / 1000)
    return marks


async def consume_async(
    predictor: AsyncNIMPredictor, n: int, concurrency: int, marks: dict[str, float]
) -> None:
    """The measured phase through the async generator."""
    meter = Meter(marks)
    results = predict_many(
        predictor, images(n), concurrency=concurrency, user_prompt="How many shapes are there?"
    )
    async with contextlib.aclosing(results):
        async for result in results:
            meter.observe(result)
    meter.end()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--blocking", action="store_true", help="measure NIMPredictor.predict_many (blocking)"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 inputs (the --n minimum)")
    args = parser.parse_args()
    if args.quick:
        args.n = 2000
    if args.n < 2000:
        parser.error("--n must be at least 2000 (the first mark is at 1,000)")
    m = asyncio.run(run(args.n, args.concurrency, args.blocking))
    growth = m["peak_all_mb"] - m["peak_1k_mb"]
    kind = "blocking NIMPredictor.predict_many" if args.blocking else "async predict_many"
    print(f"{kind} memory (in-process emulator, an emulator not a model)")
    print(f"  inputs: {int(m['done'])} ({int(m['failed'])} failed), concurrency {args.concurrency}")
    print(f"  peak RSS after 1k:  {m['peak_1k_mb']:.1f} MB  (current {m['rss_1k_mb']:.1f} MB)")
    print(
        f"  peak RSS after {args.n // 1000}k: {m['peak_all_mb']:.1f} MB  "
        f"(current {m['rss_all_mb']:.1f} MB)"
    )
    print(f"  growth 1k -> {args.n // 1000}k: {growth:+.1f} MB")
    print(f"  peer: holding results in a list costs {m['kept_per_1k_mb']:.2f} MB per 1k")
    print(f"  time: {m['seconds']:.1f} s ({m['done'] / m['seconds']:.0f} inputs/s)")
    flat = growth < 10.0
    print("  flat:", "yes" if flat else "NO")
    return 0 if flat and m["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
