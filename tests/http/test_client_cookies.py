"""ServerClient skips httpx's per-response cookie extraction (issue 15), and keeps no cookies.

httpx has no public switch for the extraction: ``ServerClient`` replaces the ``extract_cookies``
method of its client's ``Cookies`` object. These tests fail loudly if httpx changes how it calls
it (then the override is dead code, or no longer skips the work) instead of silently losing it.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from nim_async.http.client import ServerClient
from nim_async.http.transport import AiohttpTransport

from .conftest import served

SSE = b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """Every answer sets a cookie: GET /v1/models (JSON), POST /v1/chat/completions (SSE)."""

    async def models(request: web.Request) -> web.Response:
        response = web.json_response({"data": [{"id": "m"}]})
        response.set_cookie("session", "abc")
        return response

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        response = web.Response(body=SSE, content_type="text/event-stream")
        response.set_cookie("session", "abc")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    async with served(app) as url:
        yield url


@pytest.fixture
def urllib_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of every ``urllib.request.Request`` built (httpx's cookie adapter is one)."""
    built: list[str] = []
    original = urllib.request.Request.__init__

    def counting(self: urllib.request.Request, url: str, *args: Any, **kwargs: Any) -> None:
        built.append(url)
        original(self, url, *args, **kwargs)

    monkeypatch.setattr(urllib.request.Request, "__init__", counting)
    return built


async def test_httpx_still_extracts_cookies_through_the_cookies_object(
    server: str, urllib_requests: list[str]
) -> None:
    # The two facts the override relies on: httpx calls client.cookies.extract_cookies once
    # per response, and (left alone) that builds a urllib Request per response.
    calls: list[httpx.Response] = []
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        await client.get(f"{server}/v1/models")
        assert len(urllib_requests) == 1, "httpx no longer builds a urllib adapter per response"
        assert "session" in client.cookies
        original = client.cookies.extract_cookies

        def spy(response: httpx.Response) -> None:
            calls.append(response)
            original(response)

        client.cookies.extract_cookies = spy  # type: ignore[method-assign]
        response = await client.get(f"{server}/v1/models")
    assert calls == [response], "httpx no longer calls client.cookies.extract_cookies(response)"


async def test_server_client_builds_no_cookie_adapter_and_keeps_no_cookie(
    server: str, urllib_requests: list[str]
) -> None:
    client = ServerClient(server, timeout=10)
    try:
        assert await client.models() == [{"id": "m"}]
        for _ in range(3):
            answer = await client.post(b"{}", stream=True)
            assert await answer.read() == SSE
        assert urllib_requests == []
        assert len(client._client.cookies) == 0
        assert "cookie" not in client._client.build_request("GET", "/v1/models").headers
    finally:
        await client.aclose()
