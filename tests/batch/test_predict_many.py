"""predict_many against the real emulator: one result per input, limits, retries, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nim_async.bench.server_metrics import parse_prometheus
from nim_async.errors import (
    BadRequestError,
    NIMPredictionError,
    PredictionParseError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
)
from nim_async.predict.batch import (
    BatchResult,
    is_retryable,
    predict_many,
    result_record,
    source_label,
)
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.results import VQAResponse

QUESTION = "How many shapes are there?"
MODEL = "cosmos-reason1-7b"


class InFlight:
    """Wraps a real predictor and counts the calls in flight (and the most ever)."""

    def __init__(self, predictor: AsyncNIMPredictor) -> None:
        self.predictor = predictor
        self.now = 0
        self.peak = 0
        self.calls = 0

    async def __call__(
        self, source: Any, user_prompt: str | None = None, sampling_params: Any = None
    ) -> Any:
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.predictor(
                source, user_prompt=user_prompt, sampling_params=sampling_params
            )
        finally:
            self.now -= 1


def batch_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of predict_many still alive (there must be none once the iterator is closed)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "_predict_one" and not t.done()
    ]


async def collect(results: Any) -> list[BatchResult]:
    async with contextlib.aclosing(results):
        return [r async for r in results]


async def test_every_input_gets_one_result(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    results = await collect(predict_many(vqa, shapes * 3, concurrency=5, user_prompt=QUESTION))
    assert sorted(r.index for r in results) == list(range(36))
    assert all(r.ok and r.error is None for r in results)
    for r in results:
        assert isinstance(r.response, VQAResponse)
        assert r.source is shapes[r.index % 12]
        assert r.attempts == 1
        assert r.elapsed > 0
    # The emulator counts the rectangles it sees: 1..3 per image.
    answers = {r.index: r.response.result.answer for r in results if r.response is not None}
    assert answers[0] == "1"
    assert answers[1] == "2"
    assert answers[2] == "3"


async def test_ordered_yields_in_input_order(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    results = await collect(
        predict_many(vqa, iter(shapes * 2), concurrency=6, user_prompt=QUESTION, ordered=True)
    )
    assert [r.index for r in results] == list(range(24))


async def test_ordered_window_bounds_what_is_pulled_ahead(
    vqa: AsyncNIMPredictor, shapes: list[bytes]
) -> None:
    """Item 0 is held back until every other item of the window finished: the window stops
    pulling new inputs meanwhile, so at most `reorder_window` inputs are ever ahead."""
    window = 6
    gate = asyncio.Event()
    finished = 0
    pulled = 0
    yielded = 0
    ahead: list[int] = []

    async def slow_first(
        source: Any, user_prompt: str | None = None, sampling_params: Any = None
    ) -> Any:
        nonlocal finished
        if source is shapes[0] and not gate.is_set():
            await gate.wait()
        response = await vqa(source, user_prompt=user_prompt, sampling_params=sampling_params)
        finished += 1
        if finished == window - 1:
            gate.set()
        return response

    def sources() -> Iterator[bytes]:
        nonlocal pulled
        for item in [shapes[0], *shapes[1:] * 3]:
            pulled += 1
            ahead.append(pulled - yielded)
            yield item

    results = predict_many(
        slow_first, sources(), concurrency=3, ordered=True, reorder_window=window
    )
    order = []
    async with contextlib.aclosing(results):
        async for r in results:
            yielded += 1
            order.append(r.index)
    assert order == list(range(34))
    assert max(ahead) <= window


async def test_concurrency_never_exceeds_the_limit(on_emulator: Any, shapes: list[bytes]) -> None:
    async with on_emulator(ttft_ms=40, itl_ms=2) as (emu, predictor):
        counted = InFlight(predictor)
        peak_running = 0
        done = asyncio.Event()

        async def watch_metrics() -> None:
            nonlocal peak_running
            async with httpx.AsyncClient(base_url=emu.url) as client:
                while not done.is_set():
                    text = (await client.get("/v1/metrics")).text
                    values = parse_prometheus(text)
                    for name in ("num_requests_running", "num_requests_waiting"):
                        assert f"vllm:{name}" in values, f"vllm:{name} missing from /v1/metrics"
                    peak_running = max(peak_running, int(values["vllm:num_requests_running"]))
                    await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_metrics())
        results = await collect(
            predict_many(counted, shapes * 4, concurrency=4, user_prompt=QUESTION)
        )
        done.set()
        await watcher
    assert len(results) == 48
    assert all(r.ok for r in results)
    assert counted.peak == 4  # reached, never exceeded
    assert 1 <= peak_running <= 4


async def test_sources_are_pulled_lazily(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    """An endless generator works: predict_many pulls only what the slots need."""
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield shapes[i % len(shapes)]

    results = predict_many(vqa, endless(), concurrency=4, user_prompt=QUESTION)
    got = 0
    async with contextlib.aclosing(results):
        async for _ in results:
            got += 1
            assert pulled <= got + 4
            if got == 20:
                break
    assert pulled <= 24
    assert batch_tasks() == []


async def test_async_iterable_sources(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    async def agen() -> Any:
        for item in shapes:
            await asyncio.sleep(0)
            yield item

    results = await collect(predict_many(vqa, agen(), concurrency=3, user_prompt=QUESTION))
    assert sorted(r.index for r in results) == list(range(12))


async def test_cancelling_the_consumer_leaves_no_tasks(
    on_emulator: Any, shapes: list[bytes]
) -> None:
    async with on_emulator(ttft_ms=200) as (_emu, predictor):
        started = asyncio.Event()

        async def consume() -> None:
            results = predict_many(predictor, shapes * 10, concurrency=8)
            async with contextlib.aclosing(results):
                started.set()
                async for _ in results:
                    pass

        task = asyncio.create_task(consume())
        await started.wait()
        for _ in range(500):
            if batch_tasks():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batch_tasks() == []


@pytest.mark.parametrize("status", [503, 429, 502])
async def test_retryable_failures_are_retried(
    on_emulator: Any, shapes: list[bytes], status: int
) -> None:
    # One request at a time and a seeded emulator: the injected failures are repeatable.
    async with on_emulator(fail_rate=0.5, fail_status=status, seed=7) as (_emu, predictor):
        results = await collect(
            predict_many(
                predictor,
                shapes,
                concurrency=1,
                retries=12,
                backoff=0.001,
                user_prompt=QUESTION,
            )
        )
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
    assert sum(r.attempts for r in results) > len(shapes)


async def test_failures_are_recorded_not_raised(on_emulator: Any, shapes: list[bytes]) -> None:
    async with on_emulator(fail_rate=0.5, fail_status=503, seed=3) as (_emu, predictor):
        results = await collect(
            predict_many(predictor, shapes * 3, concurrency=4, retries=0, user_prompt=QUESTION)
        )
    assert sorted(r.index for r in results) == list(range(36))
    failed = [r for r in results if not r.ok]
    assert failed
    assert len(failed) < 36
    for r in failed:
        assert r.response is None
        assert isinstance(r.error, ServerError)
        assert r.error.status_code == 503
        assert r.attempts == 1
        record = result_record(r)
        assert record["status"] == "error"
        assert record["error"]["type"] == type(r.error).__name__
        assert record["error"]["status_code"] == 503


async def test_client_errors_are_not_retried(on_emulator: Any, shapes: list[bytes]) -> None:
    async with on_emulator(fail_rate=1.0, fail_status=400) as (_emu, predictor):
        results = await collect(predict_many(predictor, shapes[:4], retries=5))
    assert all(isinstance(r.error, BadRequestError) and r.attempts == 1 for r in results)


async def test_internal_server_errors_are_not_retried(
    on_emulator: Any, shapes: list[bytes]
) -> None:
    # One retry policy (nim_async.http.retry): a 500 is deterministic for the same request.
    async with on_emulator(fail_rate=1.0, fail_status=500) as (emu, predictor):
        results = await collect(predict_many(predictor, shapes[:4], retries=5, backoff=0.001))
        assert emu.metrics.errors == {500: 4}
    assert all(isinstance(r.error, ServerError) and r.attempts == 1 for r in results)


async def test_disconnects_end_as_errors_after_retries(
    on_emulator: Any, shapes: list[bytes]
) -> None:
    async with on_emulator(disconnect_after=2) as (_emu, predictor):
        results = await collect(
            predict_many(predictor, shapes[:5], concurrency=2, retries=2, backoff=0.001)
        )
    assert sorted(r.index for r in results) == list(range(5))
    for r in results:
        assert not r.ok
        assert isinstance(r.error, NIMPredictionError)
        assert is_retryable(r.error)
        assert r.attempts == 3


async def test_bad_inputs_are_recorded(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    sources: list[Any] = [shapes[0], b"not an image", "/no/such/file.png", shapes[1]]
    results = await collect(predict_many(vqa, sources, ordered=True, retries=3))
    assert [r.ok for r in results] == [True, False, False, True]
    assert all(r.attempts == 1 for r in results[1:3])
    assert source_label(sources[2]) == "/no/such/file.png"
    assert source_label(sources[1]) == "<12 bytes>"


async def test_no_server_is_retryable_and_recorded(shapes: list[bytes]) -> None:
    nowhere = "http://127.0.0.1:9"
    async with AsyncNIMPredictor(MODEL, task_type="vqa", base_url=nowhere, retries=0) as p:
        results = await collect(predict_many(p, shapes[:2], retries=1, backoff=0.001))
    assert all(isinstance(r.error, ServiceUnavailableError) for r in results)
    assert all(r.attempts == 2 for r in results)


async def test_progress_bar_reports_done_and_failed(
    on_emulator: Any, shapes: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    async with on_emulator(fail_rate=1.0, fail_status=500) as (_emu, predictor):
        results = await collect(predict_many(predictor, shapes[:3], retries=0, progress=True))
    assert len(results) == 3
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "3 failed" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"retries": -1}, "retries"),
        ({"concurrency": 8, "reorder_window": 4}, "reorder_window"),
    ],
)
async def test_invalid_arguments(
    vqa: AsyncNIMPredictor, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await collect(predict_many(vqa, [], **kwargs))


def test_retryable_classification() -> None:
    assert is_retryable(ServerError(503, "busy"))
    assert not is_retryable(ServerError(500, "boom"))
    assert is_retryable(ServerError(502, "bad gateway"))
    assert is_retryable(RateLimitError(429, "slow down"))
    # a stream that broke mid-way: the predictor cannot resend it, the batch runs the input again
    assert is_retryable(StreamError("cut", partial_text="{"))
    assert is_retryable(ServiceUnavailableError("http://x"))
    assert not is_retryable(BadRequestError(400, "bad"))
    assert not is_retryable(PredictionParseError("no json", raw_output="x"))


async def test_the_predictor_method_delegates(vqa: AsyncNIMPredictor, shapes: list[bytes]) -> None:
    results = vqa.predict_many(shapes[:3], concurrency=2, user_prompt=QUESTION, ordered=True)
    got = [(r.index, r.response.result.answer if r.response else None) async for r in results]
    assert got == [(0, "1"), (1, "2"), (2, "3")]
