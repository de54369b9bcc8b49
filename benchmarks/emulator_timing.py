"""How faithfully the NIM emulator honours its timing model (a benchmark, not a unit test).

Starts ``python -m nim_async.emulator`` as a subprocess (so client and server do not share an
event loop) and measures, with a streaming client:

1. TTFT and ITL at concurrency 1 against ``--ttft-ms`` / ``--itl-ms`` (goal: ratio within 10 %).
2. Queueing when concurrency exceeds ``--max-num-seqs``: TTFT grows in waves and
   ``vllm:num_requests_waiting`` shows the queue.
3. Raw streaming throughput with the timing model off (tokens/s seen by the client).

Usage::

    .venv/bin/python benchmarks/emulator_timing.py            # about 30 s
    .venv/bin/python benchmarks/emulator_timing.py --quick    # about 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx
import orjson

from nim_async.bench.server_metrics import parse_prometheus


@dataclass
class Sample:
    start: float
    first: float = 0.0
    times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_emulator(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nim_async.emulator",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(400):
            try:
                if (await c.get("/v1/health/ready")).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("the emulator did not become ready")


async def stop_emulator(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await proc.wait()


BODY = {
    "model": "cosmos-reason1-7b",
    "messages": [{"role": "user", "content": "Describe the image."}],
    "stream": True,
    "ignore_eos": True,
}


async def one_request(client: httpx.AsyncClient, max_tokens: int, prompt: str = "") -> Sample:
    payload: dict[str, object] = {**BODY, "max_tokens": max_tokens}
    if prompt:
        payload["messages"] = [{"role": "user", "content": prompt}]
    body = orjson.dumps(payload)
    sample = Sample(start=time.perf_counter())
    buf = b""
    async with client.stream(
        "POST",
        "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    ) as r:
        r.raise_for_status()
        async for data in r.aiter_raw():
            now = time.perf_counter()
            buf += data
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                    continue
                chunk = orjson.loads(ev[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    if not sample.times:
                        sample.first = now
                    sample.times.append(now)
    return sample


async def concurrency_one(ttft_ms: float, itl_ms: float, n: int, tokens: int) -> dict[str, float]:
    proc, url = await start_emulator("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await one_request(client, 4)  # warm the connection
            samples = [await one_request(client, tokens) for _ in range(n)]
    finally:
        await stop_emulator(proc)
    ttft = statistics.mean(s.ttft for s in samples) * 1000
    itl = statistics.mean(x for s in samples for x in s.itls) * 1000
    return {
        "ttft_ms": ttft,
        "ttft_ratio": ttft / ttft_ms if ttft_ms else float("nan"),
        "itl_ms": itl,
        "itl_ratio": itl / itl_ms if itl_ms else float("nan"),
        "ttft_p90_ms": sorted(s.ttft for s in samples)[int(0.9 * (n - 1))] * 1000,
    }


async def prefill(ttft_ms: float, per_1k_ms: float, n: int) -> dict[str, float]:
    proc, url = await start_emulator(
        "--ttft-ms", str(ttft_ms), "--prefill-ms-per-1k-tokens", str(per_1k_ms)
    )
    prompt = "word " * 2000  # about 2000 prompt tokens
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await one_request(client, 2)
            r = await client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 1},
            )
            prompt_tokens = r.json()["usage"]["prompt_tokens"]
            samples = [await one_request(client, 4, prompt) for _ in range(n)]
    finally:
        await stop_emulator(proc)
    expected = ttft_ms + per_1k_ms * prompt_tokens / 1000
    ttft = statistics.mean(s.ttft for s in samples) * 1000
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_ms": ttft,
        "expected_ms": expected,
        "ratio": ttft / expected,
    }


async def queueing(
    max_num_seqs: int, concurrency: int, ttft_ms: float, itl_ms: float, tokens: int
) -> dict[str, object]:
    proc, url = await start_emulator(
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--max-num-seqs",
        str(max_num_seqs),
    )
    peak_waiting = 0.0
    peak_running = 0.0
    try:
        limits = httpx.Limits(max_connections=concurrency + 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            # open every connection first so wave 1 does not pay for TCP set-up
            await asyncio.gather(*(one_request(client, 1) for _ in range(concurrency)))
            tasks = [asyncio.create_task(one_request(client, tokens)) for _ in range(concurrency)]
            while not all(t.done() for t in tasks):
                text = (await client.get("/v1/metrics")).text
                values = parse_prometheus(text)
                peak_waiting = max(peak_waiting, values.get("vllm:num_requests_waiting", 0.0))
                peak_running = max(peak_running, values.get("vllm:num_requests_running", 0.0))
                await asyncio.sleep(0.01)
            samples = [t.result() for t in tasks]
    finally:
        await stop_emulator(proc)
    ttfts = sorted(s.ttft * 1000 for s in samples)
    service_ms = ttft_ms + (tokens - 1) * itl_ms
    waves = [
        statistics.mean(ttfts[i : i + max_num_seqs]) for i in range(0, len(ttfts), max_num_seqs)
    ]
    expected = [ttft_ms + k * service_ms for k in range(len(waves))]
    return {
        "peak_waiting": peak_waiting,
        "peak_running": peak_running,
        "expected_peak_waiting": concurrency - max_num_seqs,
        "wave_ttft_ms": [round(w, 1) for w in waves],
        "expected_wave_ttft_ms": [round(e, 1) for e in expected],
    }


async def throughput(concurrency: int, requests: int, tokens: int) -> dict[str, float]:
    proc, url = await start_emulator()
    try:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            await one_request(client, 4)
            sem = asyncio.Semaphore(concurrency)

            async def run() -> Sample:
                async with sem:
                    return await one_request(client, tokens)

            t0 = time.perf_counter()
            samples = await asyncio.gather(*(run() for _ in range(requests)))
            elapsed = time.perf_counter() - t0
    finally:
        await stop_emulator(proc)
    total = sum(len(s.times) for s in samples)
    return {"tokens": total, "seconds": elapsed, "tokens_per_s": total / elapsed}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args(argv)
    n = 5 if args.quick else 15
    ok = True
    print("== concurrency 1: measured vs settings (goal: ratio within 10 %)")
    base = await concurrency_one(0.0, 0.0, n, 8)
    print(
        f"  baseline with timing off: first token after {base['ttft_ms']:.2f}ms "
        "(HTTP round trip + request handling on this machine, included in the TTFT below)"
    )
    for ttft_ms, itl_ms, tokens in ((50.0, 10.0, 48), (200.0, 25.0, 24)):
        res = await concurrency_one(ttft_ms, itl_ms, n, tokens)
        good = abs(res["ttft_ratio"] - 1) <= 0.1 and abs(res["itl_ratio"] - 1) <= 0.1
        ok &= good
        print(
            f"  ttft={ttft_ms:.0f}ms itl={itl_ms:.0f}ms x{n} requests of {tokens} tokens: "
            f"TTFT {res['ttft_ms']:.1f}ms (ratio {res['ttft_ratio']:.3f}, p90 "
            f"{res['ttft_p90_ms']:.1f}ms), ITL {res['itl_ms']:.2f}ms "
            f"(ratio {res['itl_ratio']:.3f}) {'OK' if good else 'OUTSIDE 10 %'}"
        )
    pf = await prefill(20.0, 50.0, n)
    good = abs(pf["ratio"] - 1) <= 0.1
    ok &= good
    print(
        f"  prefill: ttft=20ms + 50ms per 1k of {pf['prompt_tokens']:.0f} prompt tokens: TTFT "
        f"{pf['ttft_ms']:.1f}ms vs {pf['expected_ms']:.1f}ms (ratio {pf['ratio']:.3f}) "
        f"{'OK' if good else 'OUTSIDE 10 %'}"
    )
    print("== queueing: concurrency 8 > --max-num-seqs 2 (ttft 50ms, itl 5ms, 32 tokens)")
    q = await queueing(2, 8, 50.0, 5.0, 32)
    print(
        f"  peak vllm:num_requests_waiting {q['peak_waiting']:.0f} "
        f"(expected {q['expected_peak_waiting']}), peak running {q['peak_running']:.0f}"
    )
    print(f"  TTFT per wave {q['wave_ttft_ms']} ms, expected ~{q['expected_wave_ttft_ms']} ms")
    print("== throughput with the timing model off (client and server share 2 cores)")
    t = await throughput(32, 100 if args.quick else 300, 256)
    print(
        f"  {t['tokens']:.0f} streamed tokens in {t['seconds']:.2f}s: "
        f"{t['tokens_per_s']:.0f} tokens/s at concurrency 32"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
