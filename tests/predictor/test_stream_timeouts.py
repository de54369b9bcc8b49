"""The stream's idle timeout and deadline: one lazy timer per stream, not one per read.

The server here drips events at set intervals; the outer ``asyncio.wait_for(..., HANG)`` only
turns a hang into a failure. No assertion is about how long anything took.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from nim_async import errors
from nim_async.predict.predictor import AsyncNIMPredictor

HANG = 20.0
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
END = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


class Server:
    """The chat endpoint streams ``n`` tokens ``every`` seconds apart, then ends or stalls."""

    def __init__(self) -> None:
        self.url = ""
        self.n = 3
        self.every = 0.0
        self.stall = False
        self.headers_after = 0.0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(state.headers_after)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(state.n):
            await response.write(TOKEN)
            await asyncio.sleep(state.every)
        if state.stall:
            await asyncio.sleep(60)
        await response.write(END)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _predictor(
    server: Server, n: int, every: float = 0.0, stall: bool = False, **kwargs: Any
) -> AsyncNIMPredictor:
    server.n, server.every, server.stall = n, every, stall
    return AsyncNIMPredictor("m", "vqa", base_url=server.url, retries=0, dialect="openai", **kwargs)


async def test_the_idle_limit_moves_with_every_data_event(server: Server) -> None:
    # 15 tokens 0.1 s apart (1.5 s, three idle limits of 0.5 s), then silence
    async with _predictor(server, 15, 0.1, stall=True, timeout=0.5) as p:
        tokens: list[str] = []

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                async for token in stream:
                    tokens.append(token)

        with pytest.raises(errors.PredictionTimeoutError, match=r"no data event for 0\.5 s"):
            await asyncio.wait_for(consume(), HANG)
    assert len(tokens) == 15  # the limit was not reached while events kept coming


async def test_cancelling_a_waiting_stream_is_a_cancellation_not_a_timeout(server: Server) -> None:
    async with _predictor(server, 1, stall=True, timeout=5) as p:
        got_first = asyncio.Event()
        stream = p.stream(_jpeg())

        async def consume() -> None:
            async with stream:
                async for _ in stream:
                    got_first.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(got_first.wait(), HANG)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.state.value == "closed"


async def test_a_slow_reader_of_a_sent_answer_is_not_timed_out(server: Server) -> None:
    # The server sends everything at once; the caller takes longer than the idle limit
    # between tokens. The limit is about the server's silence while the stream waits.
    async with _predictor(server, 4, timeout=0.3) as p:
        tokens: list[str] = []

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                async for token in stream:
                    tokens.append(token)
                    await asyncio.sleep(0.4)

        await asyncio.wait_for(consume(), HANG)
    assert tokens == ["a"] * 4


async def test_the_deadline_ends_a_stream_whose_events_keep_coming(server: Server) -> None:
    async with _predictor(server, 1000, 0.05, timeout=5, stream_deadline=0.5) as p:
        tokens: list[str] = []

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                async for token in stream:
                    tokens.append(token)

        with pytest.raises(errors.PredictionTimeoutError, match=r"stream_deadline=0\.5 s"):
            await asyncio.wait_for(consume(), HANG)
    assert 0 < len(tokens) < 1000


async def test_an_answer_that_does_not_start_within_the_timeout_fails_the_stream(
    server: Server,
) -> None:
    server.headers_after = 5.0
    async with _predictor(server, 1, timeout=0.3) as p:
        stream = p.stream(_jpeg())

        async def consume() -> None:
            async with stream:
                async for _ in stream:
                    pass

        with pytest.raises(errors.PredictionTimeoutError, match=r"within (timeout=)?0\.3 s"):
            await asyncio.wait_for(consume(), HANG)
        assert stream.state.value == "failed"
        with pytest.raises(errors.PredictionTimeoutError):  # iterating again re-raises
            await stream.next_batch()
