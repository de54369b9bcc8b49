"""A blocking stream's slow caller holds the server: backpressure through the bounded channel.

An endless SSE answer from a real HTTP server on loopback (aiohttp, in the test's loop) counts
the events it managed to write. While the caller of ``NIMPredictor(..., stream=True)`` holds a
token, the facade stops reading after ``STREAM_WINDOW`` network reads, the socket buffers fill
and the server's writes block: its count stops growing. (An unbounded hand-over, as before issue
11, keeps reading the endless answer into memory: the count grows for as long as the caller
waits.)
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from PIL import Image

from nim_async import NIMPredictor

EVENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"' + b"a" * 1000 + b'"}}]}\n\n'
)


class EndlessServer:
    """Answers every chat request with an endless stream of 1 KB content events."""

    def __init__(self) -> None:
        self.written = 0
        self.port = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(EVENT)  # waits while the client does not read
                self.written += 1
        except ConnectionError:
            pass  # the client closed the stream
        return response


@pytest.fixture
async def endless() -> AsyncIterator[EndlessServer]:
    server = EndlessServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_a_slow_caller_holds_a_blocking_stream(endless: EndlessServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "PNG")
    image = buffer.getvalue()

    def run() -> list[int]:
        marks: list[int] = []
        with NIMPredictor("m", "vqa", port=endless.port, dialect="openai") as predictor:
            tokens = predictor(image, stream=True)
            for taken, token in enumerate(tokens, start=1):
                assert token == "a" * 1000
                if taken == 3:
                    for _ in range(4):  # the caller holds its third token for 4 s
                        time.sleep(1.0)
                        marks.append(endless.written)
                    break
            tokens.close()
        return marks

    marks = await asyncio.to_thread(run)
    # The buffers filled within the first seconds; then the server could write nothing more.
    assert marks[1] == marks[2] == marks[3], marks
    assert marks[3] < 50_000, marks  # at most a few tens of MB in flight (here ~10k events)
