"""Memory of predict_many: 10,000 inputs with flat peak RSS.

Feeds a lazy generator of N inputs through ``predict_many`` against the in-process emulator (a
test double, not a model) and reports the process's peak RSS after the first 1,000 results and
after all N. Flat means the 10k peak stays within a few MB of the 1k peak: nothing grows per
input (sources are pulled lazily, results are dropped as they are consumed).

For contrast it also reports the size of what a naive batch holds: all N results kept in a list
(measured as RSS growth in a second phase), so the figure is read against a peer measured in the
same run.

    .venv/bin/python benchmarks/batch_memory.py            # 10,000 inputs
    .venv/bin/python benchmarks/batch_memory.py --n 2000   # quicker
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
from nim_async.predict.batch import predict_many
from nim_async.predict.predictor import AsyncNIMPredictor


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


async def run(n: int, concurrency: int) -> dict[str, float]:
    marks: dict[str, float] = {}
    settings = EmulatorSettings(ttft_ms=0.0, itl_ms=0.0)
    async with (
        Emulator(settings, host="127.0.0.1", port=0) as emu,
        AsyncNIMPredictor("cosmos-reason1-7b", task_type="vqa", base_url=emu.url) as predictor,
    ):
        start = time.perf_counter()
        done = failed = 0
        results = predict_many(
            predictor,
            images(n),
            concurrency=concurrency,
            user_prompt="How many shapes are there?",
        )
        async with contextlib.aclosing(results):
            async for result in results:
                done += 1
                failed += not result.ok
                orjson.dumps(result.response.result if result.response else None)
                if done == 1000:
                    gc.collect()
                    marks["peak_1k_mb"] = peak_rss_mb()
                    marks["rss_1k_mb"] = current_rss_mb()
                    marks["t_1k_s"] = time.perf_counter() - start
        gc.collect()
        marks["peak_all_mb"] = peak_rss_mb()
        marks["rss_all_mb"] = current_rss_mb()
        marks["seconds"] = time.perf_counter() - start
        marks["failed"] = failed
        marks["done"] = done

        # Peer, same run: keep every result (what a list-collecting batch would hold).
        before = current_rss_mb()
        kept = [r async for r in predict_many(predictor, images(n // 5), concurrency=concurrency)]
        gc.collect()
        marks["kept_per_1k_mb"] = (current_rss_mb() - before) / (len(kept) / 1000)
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.n < 2000:
        parser.error("--n must be at least 2000 (the first mark is at 1,000)")
    m = asyncio.run(run(args.n, args.concurrency))
    growth = m["peak_all_mb"] - m["peak_1k_mb"]
    print("predict_many memory (in-process emulator, an emulator not a model)")
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
