"""Starting a request does not hold the event loop for preparing and sending at once.

Preparing (checks, base64, the body) and sending (httpx's and aiohttp's objects, the write)
each cost about half a millisecond of CPU; the predictor yields to the loop between them, so
other streams' chunks and timers get a turn (issue 15: event-loop lag at half saturation).
These tests see the yield, not a timing: a callback scheduled just before the call has run by
the time the request is handed to the HTTP client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nim_async.predict.predictor import AsyncNIMPredictor

from .conftest import MODEL


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
