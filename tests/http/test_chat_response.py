"""ChatResponse over the default transport: one await per chunk, and ``watched`` (issue 15)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from nim_async import errors
from nim_async.http.client import ServerClient

from .conftest import served

EVENT = b"data: {}\n\n"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """POST /v1/chat/completions?n=N[&stall=1]: N events, then the end (or nothing for 30 s)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(int(request.query["n"])):
            await response.write(EVENT)
        if "stall" in request.query:
            await asyncio.sleep(30)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with served(app) as url:
        yield url


async def _read_all(client: ServerClient, query: str, watched: float | None = None) -> bytes:
    client._chat_url = client._chat_url.copy_with(query=query.encode())
    answer = await client.post(b"{}", stream=True)
    if watched is not None:
        answer.watched(watched)
    chunks = []
    try:
        while (chunk := await answer.next_chunk()) is not None:
            chunks.append(chunk)
    finally:
        await answer.aclose()
    assert await answer.next_chunk() is None  # after the end, the end again
    return b"".join(chunks)


async def test_the_body_is_read_to_its_end_and_the_connection_reused(server: str) -> None:
    client = ServerClient(server, timeout=5)
    try:
        for n in (0, 1, 40):
            assert await _read_all(client, f"n={n}") == EVENT * n
        assert client.transport.connections_opened == 1  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_a_stall_is_a_timeout_unless_the_caller_watches_it(server: str) -> None:
    client = ServerClient(server, timeout=0.3)
    try:
        # not watched, or watched with a longer limit: the client's read timer fails the read
        for watched in (None, 0.6):
            with pytest.raises(errors.PredictionTimeoutError):
                await asyncio.wait_for(_read_all(client, "n=2&stall=1", watched), 10)
        # watched within the client's timeout: the caller's watchdog is the only limit, so
        # without one the read waits past the client's timeout
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_read_all(client, "n=2&stall=1", 0.3), 1.0)
    finally:
        await client.aclose()
