"""One retry policy: the server sees exactly the documented number of sends per input.

Against the emulator answering every chat request with HTTP 503 (``fail_rate=1``,
``fail_status=503``), counted by the emulator's own metrics. The documented maximum
(:mod:`nim_async.predict.batch`): the predictor's attempts (``retries + 1``) times
``1 + retries`` of the batch, which is 0 by default, so a batch does not multiply the
predictor's attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nim_async.errors import ServerError
from nim_async.predict.batch import predict_many
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.sync.predictor import NIMPredictor

MODEL = "cosmos-reason1-7b"


def _all_503(results: list[Any]) -> None:
    for r in results:
        assert isinstance(r.error, ServerError)
        assert r.error.status_code == 503


async def test_single_blocking_call_sends_the_predictors_attempts(
    start_emulator: Any, image_factory: Any
) -> None:
    image = image_factory(size=(64, 64), shapes=[("red", (8, 8, 40, 40))], fmt="PNG")
    async with start_emulator(fail_rate=1.0, fail_status=503) as emu:

        def run() -> None:
            with (
                NIMPredictor(MODEL, "vqa", port=emu.port) as p,  # default retries=3
                pytest.raises(ServerError),
            ):
                p(image)

        await asyncio.to_thread(run)
        assert emu.metrics.errors == {503: 4}


async def test_blocking_batch_does_not_multiply_the_predictors_attempts(
    start_emulator: Any, image_factory: Any
) -> None:
    image = image_factory(size=(64, 64), shapes=[("red", (8, 8, 40, 40))], fmt="PNG")
    async with start_emulator(fail_rate=1.0, fail_status=503) as emu:

        def run() -> list[Any]:
            with NIMPredictor(MODEL, "vqa", port=emu.port) as p:  # defaults throughout
                return list(p.predict_many([image] * 5, concurrency=5))

        results = await asyncio.to_thread(run)
        _all_503(results)
        assert all(r.attempts == 1 for r in results)  # the batch itself called once
        assert emu.metrics.errors == {503: 5 * 4}  # 4 sends per input: the predictor's


@pytest.mark.parametrize(
    ("predictor_retries", "batch_retries", "sends"), [(2, 0, 3), (0, 2, 3), (1, 1, 4)]
)
async def test_documented_sends_per_input(
    start_emulator: Any,
    image_factory: Any,
    predictor_retries: int,
    batch_retries: int,
    sends: int,
) -> None:
    image = image_factory(size=(64, 64), shapes=[("red", (8, 8, 40, 40))], fmt="PNG")
    async with (
        start_emulator(fail_rate=1.0, fail_status=503) as emu,
        AsyncNIMPredictor(MODEL, "vqa", base_url=emu.url, retries=predictor_retries) as p,
    ):
        results = [
            r
            async for r in predict_many(
                p, [image] * 3, concurrency=3, retries=batch_retries, backoff=0.01
            )
        ]
    _all_503(results)
    assert all(r.attempts == batch_retries + 1 for r in results)
    assert sends == (predictor_retries + 1) * (batch_retries + 1)
    assert emu.metrics.errors == {503: 3 * sends}
