"""predict_many over a predictor with several endpoints: a failed input runs again elsewhere.

Real emulators over loopback; a port nobody listens on is a real refused connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from nim_async.config import NIMSamplingParams
from nim_async.predict.batch import predict_many
from nim_async.predict.endpoints import Balancing, current_route
from nim_async.predict.journal import BatchJournal
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.results import PredictionResponse

MODEL = "cosmos-reason1-7b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_batch_retries_on_another_endpoint_without_its_backoff(
    emulator: Any, shapes: list[bytes]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncNIMPredictor(
        MODEL, "vqa", endpoints=[dead, emulator.url], retries=0, dialect="openai"
    ) as p:
        started = time.monotonic()
        results = [r async for r in predict_many(p, shapes, concurrency=1, retries=1, backoff=30.0)]
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert results[0].attempts == 2  # refused by the dead one, then the live one
    assert all(r.attempts == 1 for r in results[1:])  # the dead one is down: not chosen
    assert elapsed < 10.0  # the batch's 15-30 s backoff was not waited: another was up


async def test_an_input_that_broke_mid_stream_runs_again_on_another_endpoint(
    start_emulator: Any, shapes: list[bytes], tmp_path: Path
) -> None:
    # The dropping emulator breaks every stream after 3 tokens, yet is ready at once: its
    # health check brings it back quickly, so only the input's route keeps a retry away.
    quick = Balancing(health_interval=0.01, health_max_interval=0.02)
    attempts: dict[int, list[str]] = {}
    async with (
        start_emulator(disconnect_after=3, itl_ms=1) as dropping,
        start_emulator(itl_ms=1) as fine,
        AsyncNIMPredictor(
            MODEL, "vqa", endpoints=[dropping.url, fine.url], balancing=quick, dialect="openai"
        ) as p,
    ):

        async def streamed(
            source: Any,
            user_prompt: str | None = None,
            sampling_params: NIMSamplingParams | None = None,
        ) -> PredictionResponse:
            try:
                async with p.stream(source, user_prompt, sampling_params) as stream:
                    async for _ in stream:
                        pass
                    return await stream.get_final_response()
            finally:
                route = current_route()
                assert route is not None
                assert route.last is not None
                attempts.setdefault(shapes.index(source), []).append(route.last)

        out = tmp_path / "out.jsonl"
        with BatchJournal(out) as journal:
            async for result in predict_many(
                streamed, journal.pending(shapes * 3), concurrency=4, retries=1
            ):
                journal.record(result)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == len(shapes)  # the journal skipped the repeats; one line each
    assert all(r["status"] == "ok" for r in records)
    retried = [urls for urls in attempts.values() if len(urls) > 1]
    assert retried  # the dropping endpoint failed some inputs
    for urls in retried:
        assert urls[0] == dropping.url
        assert urls[1] == fine.url  # the retry went elsewhere


async def test_a_route_of_one_endpoint_changes_nothing(emulator: Any, shapes: list[bytes]) -> None:
    seen: list[object] = []
    async with AsyncNIMPredictor(MODEL, "vqa", base_url=emulator.url) as p:

        async def call(source: Any, **kwargs: Any) -> PredictionResponse:
            result = await p(source, **kwargs)
            route = current_route()
            assert route is not None
            seen.append(route.pool)
            return result

        results = [r async for r in predict_many(call, shapes[:3], concurrency=3)]
    assert all(r.ok for r in results)
    assert seen == [None, None, None]  # no pool: the one-server path never touches it
    assert current_route() is None  # scoped to each input's task
    await asyncio.sleep(0)


async def test_a_retried_input_avoids_the_endpoint_that_failed_it_even_while_it_is_up(
    start_emulator: Any, shapes: list[bytes]
) -> None:
    # 429 does not take an endpoint down, and it answers at once: with the fewest requests
    # outstanding it would draw every retry back; the input's route sends the retry elsewhere.
    async with (
        start_emulator(fail_rate=1.0, fail_status=429) as limited,
        start_emulator(itl_ms=2) as fine,
        AsyncNIMPredictor(
            MODEL, "vqa", endpoints=[limited.url, fine.url], retries=0, dialect="openai"
        ) as p,
    ):
        results = [r async for r in predict_many(p, shapes * 2, concurrency=4, retries=1)]
        assert all(s.up for s in p.endpoint_status())
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
    assert any(r.attempts == 2 for r in results)
    assert limited.metrics.errors.get(429, 0) == sum(r.attempts == 2 for r in results)
