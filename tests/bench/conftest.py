"""Fixtures for the bench tests: a small real SSE/HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web


@dataclass
class LoopbackServer:
    url: str
    connections: set[object] = field(default_factory=set)
    requests: list[dict[str, object]] = field(default_factory=list)


def _chunk(text: str) -> bytes:
    payload = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@pytest.fixture
async def http_server() -> AsyncIterator[LoopbackServer]:
    """A loopback aiohttp server: /sse?n=N, /echo, /slow, /drop, /status/{code}."""
    state = LoopbackServer(url="")

    async def track(request: web.Request) -> None:
        state.connections.add(request.transport)
        state.requests.append({"path": request.path, "headers": dict(request.headers)})

    async def sse(request: web.Request) -> web.StreamResponse:
        await track(request)
        n = int(request.query.get("n", "5"))
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(_chunk(f"t{i} "))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.Response:
        await track(request)
        body = await request.read()
        return web.json_response(
            {"method": request.method, "body_len": len(body), "headers": dict(request.headers)},
            status=201,
        )

    async def slow(request: web.Request) -> web.StreamResponse:
        await track(request)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first")
        await asyncio.sleep(1)
        await resp.write(b"late")
        return resp

    async def drop(request: web.Request) -> web.StreamResponse:
        await track(request)
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        """Modes from the JSON body: reason (thinking then content), 503, cut, error."""
        await track(request)
        mode = orjson.loads(await request.read()).get("mode", "reason")
        if mode == "503":
            return web.json_response({"error": {"message": "busy"}}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(2):
            delta = {"reasoning_content": f"think{i} "}
            await resp.write(b"data: " + orjson.dumps({"choices": [{"delta": delta}]}) + b"\n\n")
        for i in range(3):
            await resp.write(_chunk(f"t{i} "))
        if mode == "error":
            await resp.write(b'data: {"error": {"message": "boom"}}\n\n')
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        if mode != "cut":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/sse", sse)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/drop", drop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
