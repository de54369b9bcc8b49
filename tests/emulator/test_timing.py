"""The emulator's timing is a server's: preprocessing adds to TTFT, then tokens pace at the ITL.

Behaviour tests with generous bounds, not speed goals: before the fix, the token clock started
at arrival, so a request whose preprocessing outlasted ``ttft_ms`` got its overdue tokens in
one burst (chunks 0 ms apart) and the TTFT histogram still said ``ttft_ms``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import re

import httpx
import orjson
from aiohttp import web
from PIL import Image

from nim_async.emulator.timing import TokenPacer

TTFT, ITL, FETCH = 0.200, 0.020, 0.400
TOKENS = 16


def _noise_png(side: int = 256) -> bytes:
    rng = random.Random(3)
    img = Image.frombytes(
        "RGB", (side, side), bytes(rng.randrange(256) for _ in range(side**3 * 3 // side))
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def _slow_image_server(data: bytes) -> tuple[web.AppRunner, str]:
    """An image host that takes FETCH seconds to answer: a costly image to preprocess."""

    async def image(request: web.Request) -> web.Response:
        await asyncio.sleep(FETCH)
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/noise.png", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/noise.png"


def _histogram_mean(text: str, name: str) -> float:
    total = float(re.search(rf"^{name}_sum\{{[^}}]*\}} (\S+)$", text, re.M).group(1))
    count = float(re.search(rf"^{name}_count\{{[^}}]*\}} (\S+)$", text, re.M).group(1))
    assert count >= 1
    return total / count


async def test_costly_image_adds_to_ttft_then_tokens_pace_without_burst(start_emulator):
    runner, image_url = await _slow_image_server(_noise_png())
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": "Describe the image."},
                ],
            }
        ],
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        async with (
            start_emulator(ttft_ms=TTFT * 1000, itl_ms=ITL * 1000) as emu,
            httpx.AsyncClient(base_url=emu.url, timeout=30) as c,
        ):
            loop = asyncio.get_running_loop()
            arrivals: list[float] = []
            sent = loop.time()
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = orjson.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        arrivals.append(loop.time() - sent)
            metrics = (await c.get("/metrics")).text
    finally:
        await runner.cleanup()
    assert len(arrivals) == TOKENS
    first = arrivals[0]
    # preprocessing (the FETCH-second image) comes before the TTFT, not inside it
    assert first >= FETCH + TTFT - 0.02, arrivals
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # no catch-up burst: after the first token no two chunks come closer than ITL/2
    assert min(gaps) >= ITL / 2, [round(g * 1000, 1) for g in gaps]
    ttft_metric = _histogram_mean(metrics, "vllm:time_to_first_token_seconds")
    # the server's TTFT is what it actually sent (from arrival, so at most the client's view)
    assert FETCH + TTFT - 0.02 <= ttft_metric <= first + 0.005, (ttft_metric, first)
    assert _histogram_mean(metrics, "vllm:inter_token_latency_seconds") >= ITL * 0.9


def test_a_late_write_moves_the_schedule_instead_of_bursting():
    pacer = TokenPacer(first_due=1.0, itl=0.02)
    pacer.written(1.009)  # late by under half an ITL (timer jitter): the schedule holds
    assert pacer.next_due == 1.02
    pacer.written(1.5)  # a write 480 ms late: the next token is one ITL after it
    assert abs(pacer.next_due - 1.52) < 1e-9
    assert pacer.first_written == 1.009
    assert pacer.last_written == 1.5
