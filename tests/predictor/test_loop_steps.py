"""Starting a request does not hold the event loop for preparing and sending at once.

Preparing (checks, base64, the body) and sending (httpx's and aiohttp's objects, the write)
each cost about half a millisecond of CPU; the predictor yields to the loop between them, so
other streams' chunks and timers get a turn (issue 15: event-loop lag at half saturation).
These tests see the yield, not a timing: a callback scheduled just before the call has run by
the time the request is handed to the HTTP client. Likewise a large network read is decoded a
slice per loop step, so a burst from a fast server does not stop the other tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nim_async.predict.predictor import AsyncNIMPredictor

from .conftest import MODEL, Recorder


def _watch_send(predictor: AsyncNIMPredictor, ran: list[int], seen: list[bool]) -> None:
    original = predictor._send

    async def send(*args: Any, **kwargs: Any) -> Any:
        seen.append(bool(ran))  # had the loop run other callbacks since the call began?
        return await original(*args, **kwargs)

    predictor._send = send  # type: ignore[method-assign]


async def test_a_call_yields_to_the_loop_between_preparing_and_sending(
    emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("blue", (10, 10, 200, 200))])
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port, dialect="openai") as p:
        await p(image, "What color is the rectangle?")  # the image is remembered from here on
        ran: list[int] = []
        seen: list[bool] = []
        _watch_send(p, ran, seen)
        asyncio.get_running_loop().call_soon(ran.append, 1)
        result = await p(image, "What color is the rectangle?")
    assert seen == [True]
    assert result.answer == "blue"  # type: ignore[union-attr]


async def test_a_stream_yields_to_the_loop_between_preparing_and_sending(
    emulator: Any, image_factory: Any
) -> None:
    image = image_factory(shapes=[("red", (10, 10, 200, 200))])
    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port, dialect="openai") as p:
        await p(image, "What color is the rectangle?")
        ran: list[int] = []
        seen: list[bool] = []
        _watch_send(p, ran, seen)
        asyncio.get_running_loop().call_soon(ran.append, 1)
        async with p.stream(image, "What color is the rectangle?") as stream:
            text = "".join([token async for token in stream])
    assert seen == [True]
    assert "red" in text


def _sse_body(contents: list[str]) -> bytes:
    events = [
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": c}}]}).encode()
        for c in contents
    ]
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    events += [b"data: " + json.dumps(end).encode(), b"data: [DONE]"]
    return b"\n\n".join(events) + b"\n\n"


async def test_a_large_read_is_decoded_a_slice_per_loop_step(
    recorder: Recorder, image_factory: Any
) -> None:
    # 3,001 chunks (about 200 KB) written at once arrive in a few large reads; one event is
    # 40 KB, longer than a slice. Every token arrives, in order, and between two turns of
    # another task at most a slice's worth of tokens (16 KiB / ~60 B) is handed out.
    contents = [f"t{i}" for i in range(1500)] + ["y" * 40_000] + [f"u{i}" for i in range(1500)]
    recorder.script.append(
        (200, _sse_body(contents), {"Content-Type": "text/event-stream; charset=utf-8"})
    )
    turns = 0
    running = True

    async def other_task() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    image = image_factory(shapes=[("red", (10, 10, 200, 200))])
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=recorder.url, dialect="openai") as p:
        ticker = asyncio.create_task(other_task())
        marks: list[int] = []
        tokens: list[str] = []
        async with p.stream(image, "What color?") as stream:
            async for token in stream:
                tokens.append(token)
                marks.append(turns)
        running = False
        await ticker
    assert tokens == contents
    assert stream.finish_reason == "length"
    longest = max(len(list(run)) for _, run in itertools.groupby(marks))
    assert longest <= 600, f"{longest} tokens handed out in one loop step"
