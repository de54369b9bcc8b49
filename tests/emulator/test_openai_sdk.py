"""The official ``openai`` package as a client nobody here wrote."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI


def _messages(api, image: bytes, prompt: str):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": api.data_uri(image)}},
                {"type": "text", "text": prompt},
            ],
        }
    ]


async def test_async_client_non_stream(emulator, image_factory, api):
    img = image_factory(shapes=[("red", (10, 10, 100, 100)), ("blue", (200, 200, 300, 300))])
    async with AsyncOpenAI(base_url=emulator.url + "/v1", api_key="not-used") as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["cosmos-reason1-7b"]
        resp = await client.chat.completions.create(
            model="cosmos-reason1-7b",
            messages=_messages(api, img, "How many squares are there?"),
            max_completion_tokens=64,
        )
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert json.loads(choice.message.content) == {"vqa": {"answer": "2"}}
    assert resp.usage is not None
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


async def test_async_client_stream_with_usage(emulator, image_factory, api):
    img = image_factory(shapes=[("green", (10, 10, 100, 100))])
    async with AsyncOpenAI(base_url=emulator.url + "/v1", api_key="x") as client:
        stream = await client.chat.completions.create(
            model="cosmos-reason1-7b",
            messages=_messages(api, img, "Is there a green square?"),
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        finish = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    assert json.loads("".join(pieces)) == {"vqa": {"answer": "yes"}}
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == sum(1 for p in pieces if p)


def _sync_calls(url: str, messages) -> tuple[str, int, str]:
    with OpenAI(base_url=url + "/v1", api_key="x") as client:
        resp = client.chat.completions.create(model="cosmos-reason1-7b", messages=messages)
        stream = client.chat.completions.create(
            model="cosmos-reason1-7b", messages=messages, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert resp.usage is not None
    return resp.choices[0].message.content or "", resp.usage.completion_tokens, text


async def test_sync_client(emulator, image_factory, api):
    img = image_factory(shapes=[("yellow", (10, 10, 100, 100))])
    msgs = _messages(api, img, "What color is the square?")
    # the blocking client runs in a thread so the emulator's loop keeps serving
    content, n, streamed = await asyncio.to_thread(_sync_calls, emulator.url, msgs)
    assert json.loads(content) == {"vqa": {"answer": "yellow"}}
    assert streamed == content
    assert n > 5


async def test_sdk_errors_are_typed(emulator):
    async with AsyncOpenAI(base_url=emulator.url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="other", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="cosmos-reason1-7b",
                messages=[{"role": "user", "content": "hi"}],
                temperature=-1,
            )
        assert info.value.status_code == 400
        ok = await client.chat.completions.create(
            model="cosmos-reason1-7b", messages=[{"role": "user", "content": "hi"}]
        )
    assert ok.choices[0].message.content
