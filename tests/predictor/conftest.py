"""Helpers for the predictor tests (the emulator and images come from the root conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

MODEL = "cosmos-reason1-7b"


async def wait_until(predicate: Any, limit: float = 5.0) -> None:
    """Poll ``predicate()`` until true (used for server-side effects, not timings)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


class Recorder:
    """A loopback OpenAI-shaped server that records request bodies and plays scripted answers."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.script: list[tuple[int, bytes, dict[str, str]]] = []
        self.answer = '{"vqa": {"answer": "red"}}'
        self.version: dict[str, Any] | None = None
        self.version_calls = 0
        self.url = ""

    async def get_version(self, request: web.Request) -> web.Response:
        self.version_calls += 1
        if self.version is None:
            return web.Response(status=404)
        return web.json_response(self.version)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if self.script:
            status, payload, headers = self.script.pop(0)
            return web.Response(status=status, body=payload, headers=headers)
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    """A running :class:`Recorder` on 127.0.0.1 with an ephemeral port."""
    rec = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", rec.chat)
    app.router.add_get("/v1/version", rec.get_version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()
