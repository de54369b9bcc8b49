"""Helpers for the emulator tests (the shared fixtures live in the root conftest)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

MODEL = "cosmos-reason1-7b"


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(image: bytes | None, prompt: str, **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_uri(image)}})
    content.append({"type": "text", "text": prompt})
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


async def stream_chunks(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request; return the decoded chunks (the [DONE] line is checked)."""
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=url) as c,
        c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r,
    ):
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line:
                assert line.startswith("data: ")
                lines.append(line[6:])
    assert lines[-1] == "[DONE]"
    return [orjson.loads(x) for x in lines[:-1]]


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def post(url: str, body: dict[str, Any] | bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        if isinstance(body, bytes):
            return await c.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        return await c.post("/v1/chat/completions", json=body)


@pytest.fixture
def make_body() -> Callable[..., dict[str, Any]]:
    return chat_body


@pytest.fixture
def api() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable in importlib mode)."""
    return SimpleNamespace(
        MODEL=MODEL,
        data_uri=data_uri,
        body=chat_body,
        post=post,
        stream_chunks=stream_chunks,
        stream_text=stream_text,
    )
