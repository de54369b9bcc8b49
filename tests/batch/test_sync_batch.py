"""The blocking facade's predict_many: a plain generator over the async batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nim_async.emulator import Emulator, EmulatorSettings
from nim_async.sync.predictor import NIMPredictor

MODEL = "cosmos-reason1-7b"


@pytest.fixture
def threaded_emulator() -> Iterator[str]:
    """An emulator on its own loop in a thread (a sync test has no loop of its own)."""
    ready: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = []
    started = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        async with Emulator(EmulatorSettings(fail_rate=0.3, seed=5), port=0) as emu:
            ready.append((emu.url, asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    assert started.wait(30)
    url, loop, stop = ready[0]
    yield url
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


def test_sync_predict_many_yields_one_result_per_input(
    threaded_emulator: str, image_factory: Any
) -> None:
    images = [
        image_factory(size=(120, 80), shapes=[("red", (10, 10, 40 + i, 60))], fmt="PNG")
        for i in range(25)
    ]
    with NIMPredictor(MODEL, "vqa", base_url=threaded_emulator, retries=0) as predictor:
        results = list(
            predictor.predict_many(
                iter(images), concurrency=4, retries=10, user_prompt="How many shapes are there?"
            )
        )
    assert sorted(r.index for r in results) == list(range(25))
    assert all(r.ok for r in results)
    assert all(r.response is not None and r.response.result.answer == "1" for r in results)


def test_closing_the_sync_generator_early(threaded_emulator: str, image_factory: Any) -> None:
    image = image_factory(size=(120, 80), shapes=[("blue", (10, 10, 50, 60))], fmt="PNG")
    with NIMPredictor(MODEL, "vqa", base_url=threaded_emulator, retries=0) as predictor:
        results = predictor.predict_many(iter([image] * 1000), concurrency=4, retries=10)
        first = [next(results) for _ in range(5)]
        results.close()
        assert len(first) == 5
        # The predictor still works after the batch was abandoned.
        again = list(predictor.predict_many([image] * 3, retries=10, user_prompt="How many?"))
        assert [r.ok for r in again] == [True, True, True]
