"""Helpers for the emulator tests (the shared fixtures live in the root conftest)."""

from __future__ import annotations

import base64

import pytest


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(image: bytes | None, prompt: str, **extra: object) -> dict[str, object]:
    content: list[dict[str, object]] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_uri(image)}})
    content.append({"type": "text", "text": prompt})
    body: dict[str, object] = {
        "model": "cosmos-reason1-7b",
        "messages": [{"role": "user", "content": content}],
    }
    body.update(extra)
    return body


@pytest.fixture
def make_body():
    return chat_body
