"""Fixtures of the batch tests: a real predictor against the real emulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from nim_async.predict.predictor import AsyncNIMPredictor

ImageFactory = Callable[..., bytes]
MODEL = "cosmos-reason1-7b"


@pytest.fixture
def shapes(image_factory: ImageFactory) -> list[bytes]:
    """Twelve distinct small images (1–3 coloured rectangles each)."""
    colours = ["red", "blue", "green", "orange"]
    images = []
    for i in range(12):
        boxes = [
            (colours[(i + k) % 4], (10 + 60 * k, 20, 60 + 60 * k, 90)) for k in range(1 + i % 3)
        ]
        images.append(image_factory(size=(200, 120), shapes=boxes, fmt="PNG"))
    return images


@pytest.fixture
async def vqa(emulator: Any) -> AsyncIterator[AsyncNIMPredictor]:
    async with AsyncNIMPredictor(MODEL, task_type="vqa", base_url=emulator.url) as predictor:
        yield predictor


@pytest.fixture
def on_emulator(start_emulator: Any) -> Callable[..., Any]:
    """``async with on_emulator(fail_rate=0.5) as (emu, predictor)``: an emulator with those
    settings and a VQA predictor on it (predictor-level retries off: predict_many retries)."""

    @contextlib.asynccontextmanager
    async def factory(
        task: str = "vqa", retries: int = 0, **settings: Any
    ) -> AsyncIterator[tuple[Any, AsyncNIMPredictor]]:
        async with (
            start_emulator(**settings) as emu,
            AsyncNIMPredictor(
                MODEL, task_type=task, base_url=emu.url, retries=retries
            ) as predictor,
        ):
            yield emu, predictor

    return factory
