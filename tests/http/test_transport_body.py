"""AiohttpTransport's response body: read timeouts after the headers, httpx's API, no cycles."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from nim_async.http.transport import AiohttpTransport

from .conftest import served

EVENT = b"data: {}\n\n"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """/drip?n=N&every=S: N events S seconds apart; /stall?n=N: N events, then nothing."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        every = float(request.query.get("every", "0"))
        for _ in range(int(request.query["n"])):
            await response.write(EVENT)
            await asyncio.sleep(every)
        await response.write_eof()
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(int(request.query["n"])):
            await response.write(EVENT)
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/drip", drip)
    app.router.add_get("/stall", stall)
    async with served(app) as url:
        yield url


async def test_a_body_that_stops_after_the_headers_is_a_read_timeout(server: str) -> None:
    received: list[bytes] = []

    async def read(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"{server}/stall?n=3") as response:
            async for chunk in response.aiter_raw():
                received.append(chunk)

    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await read(client)
    assert b"".join(received) == EVENT * 3


async def test_the_read_timeout_is_per_read_not_for_the_whole_body(server: str) -> None:
    # 12 events 0.05 s apart: 0.6 s in all, twice the read timeout, never 0.3 s without bytes
    async with (
        httpx.AsyncClient(transport=AiohttpTransport(), timeout=0.3) as client,
        client.stream("GET", f"{server}/drip?n=12&every=0.05") as response,
    ):
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert body == EVENT * 12


async def test_the_pooled_connection_gets_its_read_timeout_back(server: str) -> None:
    # The body's own timer replaces aiohttp's per-read one; the next request on the same
    # connection must still time out while waiting for its headers' body bytes.
    transport = AiohttpTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport, timeout=0.3) as client:
        async with client.stream("GET", f"{server}/drip?n=2") as response:
            assert b"".join([c async for c in response.aiter_raw()]) == EVENT * 2

        async def read() -> None:
            async with client.stream("GET", f"{server}/stall?n=1") as response:
                async for _ in response.aiter_raw():
                    pass

        with pytest.raises(httpx.ReadTimeout):
            await read()
    assert transport.connections_opened <= 2


async def test_httpx_reading_api_still_works(server: str) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        async with client.stream("GET", f"{server}/drip?n=5") as response:
            pieces = [piece async for piece in response.aiter_raw(chunk_size=7)]
            assert response.num_bytes_downloaded == len(EVENT) * 5
        assert b"".join(pieces) == EVENT * 5
        assert all(len(p) == 7 for p in pieces[:-1])
        async with client.stream("GET", f"{server}/drip?n=4") as response:
            lines = [line async for line in response.aiter_lines()]
        assert lines.count("data: {}") == 4
        response = await client.get(f"{server}/drip?n=3")
        assert response.content == EVENT * 3
        assert response.num_bytes_downloaded == len(EVENT) * 3
        with pytest.raises(httpx.StreamConsumed):
            async for _ in response.aiter_raw():
                pass


async def test_a_closed_response_is_freed_without_the_cycle_collector(server: str) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        await client.get(f"{server}/drip?n=1")  # warm the pool
        gc.collect()
        gc.disable()
        try:
            refs: list[weakref.ref[Any]] = []
            async with client.stream("GET", f"{server}/drip?n=3") as response:
                async for _ in response.aiter_raw():
                    pass
                refs = [weakref.ref(response), weakref.ref(response.request)]
            del response
            assert [ref() for ref in refs] == [None, None]
        finally:
            gc.enable()
