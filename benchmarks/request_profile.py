"""Where a short streamed request's CPU goes: cProfile of ``AsyncNIMPredictor.stream`` (issue 15).

Against the zero-delay loopback server (:mod:`nim_async.bench.loopback_server`, its own
process), concurrency 256, 64-token answers, a 180x180 JPEG passed as bytes. Prints the client
process's CPU per request without the profiler, then the profiled CPU time (process clock)
grouped by layer, per request and as a share. cProfile inflates every Python call, so read the
shares, not the absolute profiled figures::

    python benchmarks/request_profile.py [--requests 3072] [--tokens 64] [--concurrency 256]

To compare with another checkout (a ``git archive`` copy of an older commit), pass its root:
``--root OTHER`` puts it first on ``sys.path`` (running the script from there is not enough:
the script's own directory, not the working directory, starts the path, and the editable
install would supply this tree's package). The package measured is printed.

Cyclic garbage collection is not a Python call cProfile sees; it is reported apart: its
collections per generation and CPU per request (``gc.callbacks``), without the profiler. The
GC-tracked objects each request holds while in flight (what the collector walks, and promotes
to the older generations while a request lasts) are counted for the predictor and for a raw
aiohttp peer doing the same request (``--no-census`` skips that).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import cProfile
import gc
import io
import pstats
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from PIL import Image

if __name__ == "__main__" and "--root" in sys.argv:
    sys.path.insert(0, sys.argv[sys.argv.index("--root") + 1])

import nim_async
from nim_async import AsyncNIMPredictor, NIMSamplingParams
from nim_async.protocol.sse import SSEDecoder

GROUPS = (
    ("nim_async/predict/media", "media (load, check, base64)"),
    ("nim_async/protocol/media", "media (load, check, base64)"),
    ("nim_async/protocol/wire", "body build"),
    ("nim_async/protocol/sse", "SSE framing"),
    ("nim_async/protocol/stream", "chunk handling (accumulator)"),
    ("nim_async/predict/stream", "stream object"),
    ("anyio", "stream object"),
    ("sniffio", "stream object"),
    ("nim_async/predict/predictor", "predictor prepare/finish"),
    ("nim_async/predict/pipeline", "predictor prepare/finish"),
    ("nim_async/predict/prepare", "predictor prepare/finish"),
    ("nim_async/predict/endpoints", "predictor prepare/finish"),
    ("nim_async/predict/routing", "predictor prepare/finish"),
    ("nim_async/protocol/tasks", "final parse"),
    ("pydantic", "final parse"),
    ("nim_async/http/transport", "transport adapter (httpx<->aiohttp)"),
    ("nim_async/http", "http client"),
    ("httpx", "httpx request/response objects"),
    ("urllib/request", "httpx request/response objects"),  # httpx's cookie-jar adapters
    ("aiohttp", "aiohttp (HTTP parser, pool)"),
    ("multidict", "aiohttp (HTTP parser, pool)"),
    ("yarl", "aiohttp (HTTP parser, pool)"),
    ("PIL", "media (load, check, base64)"),
    ("warnings", "media (load, check, base64)"),  # Pillow's bomb warning kept quiet
    ("concurrent/futures", "worker-thread hop"),
    ("threading", "worker-thread hop"),
    ("asyncio", "event loop"),
    ("selectors", "event loop"),
)


def _group(filename: str, name: str) -> str:
    for needle, label in GROUPS:
        if needle in filename.replace(sys.path[0] + "/", "/"):
            return label
    if "orjson" in name:
        return "orjson (body dumps, chunk loads)"
    if "socket" in name or "select" in name:
        return "event loop"
    if "binascii" in name or "b2a" in name:
        return "media (load, check, base64)"
    return "builtins and other"


async def _run(
    p: AsyncNIMPredictor, image: bytes, params: NIMSamplingParams, c: int, n: int
) -> None:
    gate = asyncio.Semaphore(c)

    async def one() -> None:
        async with gate, p.stream(image, sampling_params=params) as stream:
            async for _ in stream:
                pass

    await asyncio.gather(*(one() for _ in range(n)))


Request = Callable[[Callable[[], None], asyncio.Event], Awaitable[None]]


async def _held(request: Request, c: int) -> float:
    """GC-tracked objects per request while ``c`` requests are held after their first read."""
    ready, gate = asyncio.Event(), asyncio.Event()
    count = [0]

    def arrived() -> None:
        count[0] += 1
        if count[0] == c:
            ready.set()

    gc.collect()
    before = len(gc.get_objects())
    tasks = [asyncio.ensure_future(request(arrived, gate)) for _ in range(c)]
    await ready.wait()
    gc.collect()  # garbage is not counted: only what the requests in flight hold
    held = (len(gc.get_objects()) - before) / c
    gate.set()
    await asyncio.gather(*tasks)
    return held


async def _census(url: str, image: bytes, params: NIMSamplingParams, c: int) -> tuple[float, float]:
    """GC-tracked objects per request in flight: the predictor's, then raw aiohttp's.

    Both include this harness's task, coroutine and waiter per request. The raw aiohttp peer
    does what ``client_overhead.py``'s does: one session, base64 per request, the SSE decoder
    over ``iter_any``.
    """
    async with AsyncNIMPredictor(
        "loopback", "vqa", base_url=url, max_connections=c, retries=0, dialect="openai"
    ) as p:

        async def predictor_request(arrived: Callable[[], None], gate: asyncio.Event) -> None:
            async with p.stream(image, sampling_params=params) as stream:
                await stream.next_batch()
                arrived()
                await gate.wait()
                async for _ in stream:
                    pass

        await _run(p, image, params, c, 2 * c)  # warm-up: the pool, the caches
        predictor = await _held(predictor_request, c)
    head = (
        orjson.dumps(
            {
                "model": "loopback",
                "stream": True,
                "max_tokens": params.max_tokens,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}]}],
            }
        )[:-4]
        + b',{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,'
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def raw_request(arrived: Callable[[], None], gate: asyncio.Event | None) -> None:
            body = head + base64.b64encode(image) + b'"}}]}]}'
            async with session.post(url + "/v1/chat/completions", data=body) as response:
                decoder = SSEDecoder()
                chunks = response.content.iter_any()
                async for chunk in chunks:
                    decoder.feed_data(chunk)
                    if gate is not None:
                        arrived()
                        await gate.wait()
                        gate = None

        warm = asyncio.Event()
        warm.set()
        await asyncio.gather(*(raw_request(lambda: None, warm) for _ in range(2 * c)))
        raw = await _held(raw_request, c)
    return predictor, raw


async def _main(url: str, args: argparse.Namespace) -> None:
    buf = io.BytesIO()
    Image.effect_noise((180, 180), 40).convert("RGB").save(buf, "JPEG", quality=90)
    image = buf.getvalue()
    params = NIMSamplingParams(max_tokens=args.tokens, ignore_eos=True, temperature=0.0)
    n = args.requests
    async with AsyncNIMPredictor(
        "loopback",
        "vqa",
        base_url=url,
        max_connections=args.concurrency,
        retries=0,
        dialect="openai",
    ) as p:
        await _run(p, image, params, args.concurrency, 512)  # warm-up: pool, caches
        if args.gc_freeze:
            gc.freeze()  # an application's choice after start-up (see benchmarks/README.md)
        collections_seen = [0, 0, 0]
        gc_cpu = [0.0, 0.0, 0.0]
        started = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.process_time()
            else:
                collections_seen[info["generation"]] += 1
                gc_cpu[info["generation"]] += time.process_time() - started[0]

        gc.callbacks.append(on_gc)
        cpu, wall = time.process_time(), time.perf_counter()
        await _run(p, image, params, args.concurrency, n)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        gc.callbacks.remove(on_gc)
        print(
            f"image {len(image)} B; unprofiled: {cpu / n * 1e6:.0f} us CPU/request, "
            f"{n * args.tokens / wall:,.0f} tok/s"
        )
        print(
            f"cyclic GC (unprofiled): {sum(gc_cpu) / n * 1e6:.0f} us CPU/request "
            f"({100 * sum(gc_cpu) / cpu:.1f} %); collections per 1000 requests by generation "
            + " / ".join(f"{1000 * k / n:.1f}" for k in collections_seen)
            + "; CPU us/request by generation "
            + " / ".join(f"{t / n * 1e6:.0f}" for t in gc_cpu)
        )
        if args.census:
            mine, raw = await _census(url, image, params, args.concurrency)
            print(
                f"GC-tracked objects per request in flight (c={args.concurrency}, held after "
                f"the first read, harness included): predictor {mine:.1f}, raw aiohttp {raw:.1f}"
            )
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        await _run(p, image, params, args.concurrency, n)
        prof.disable()
    stats = pstats.Stats(prof)
    groups: collections.Counter[str] = collections.Counter()
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        groups[_group(filename, name)] += row[2]
    total = sum(groups.values())
    print(f"profiled: {total / n * 1e6:.0f} us CPU/request (cProfile overhead included)")
    for label, seconds in groups.most_common():
        print(f"  {label:38} {seconds / n * 1e6:7.0f} us  {100 * seconds / total:5.1f} %")


def main() -> None:
    """Start the loopback server, profile, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--root", help="measure the nim_async package under this directory")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the warm-up, as an application may (the library does not)",
    )
    parser.add_argument(
        "--no-census",
        dest="census",
        action="store_false",
        help="skip counting GC-tracked objects per request in flight",
    )
    args = parser.parse_args()
    print(f"nim_async from {nim_async.__file__}")
    server = subprocess.Popen(
        [sys.executable, "-m", "nim_async.bench.loopback_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        asyncio.run(_main(server.stdout.readline().strip(), args))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)


if __name__ == "__main__":
    main()
