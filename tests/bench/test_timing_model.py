"""The suite against the emulator with a known timing model agrees with the settings."""

from __future__ import annotations

from typing import Any

import pytest

from nim_async.bench.client import BenchClient, build_body
from nim_async.bench.load import LoadSpec, run_load
from nim_async.bench.metrics import summarize

TTFT_MS = 100.0
ITL_MS = 10.0
TOKENS = 11


def _bodies(image_factory: Any) -> list[Any]:
    image = image_factory(size=(64, 48), shapes=[("red", (4, 4, 30, 30))], fmt="JPEG")
    return [
        build_body(
            image, mime="image/jpeg", model="cosmos-reason1-7b", task_type="vqa", max_tokens=TOKENS
        )
    ]


async def test_ttft_itl_throughput_match_settings(start_emulator: Any, image_factory: Any) -> None:
    async with start_emulator(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_num_seqs=2) as emu:
        client = BenchClient(emu.url, max_connections=2)
        try:
            result = await run_load(
                client, _bodies(image_factory), LoadSpec(concurrency=2, num_requests=6, warmup=2)
            )
        finally:
            await client.aclose()
    point = summarize(result.records, concurrency=2, duration=result.duration)
    assert point["completed"] == 6, point["errors"]
    assert all(r.tokens == TOKENS for r in result.records)
    assert point["ttft_ms"]["mean"] == pytest.approx(TTFT_MS, rel=0.05)
    assert point["itl_ms"]["mean"] == pytest.approx(ITL_MS, rel=0.05)
    assert point["tpot_ms"]["mean"] == pytest.approx(ITL_MS, rel=0.05)
    service_s = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000.0
    expected_tput = 2 * TOKENS / service_s
    assert point["output_token_throughput"] == pytest.approx(expected_tput, rel=0.05)
    assert point["request_throughput"] == pytest.approx(2 / service_s, rel=0.05)


async def test_queueing_shows_when_concurrency_exceeds_sequence_limit(
    start_emulator: Any, image_factory: Any
) -> None:
    bodies = _bodies(image_factory)
    service_ms = TTFT_MS + (TOKENS - 1) * ITL_MS
    async with start_emulator(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_num_seqs=2) as emu:
        client = BenchClient(emu.url, max_connections=8)
        try:
            closed = await run_load(client, bodies, LoadSpec(concurrency=4, num_requests=8))
            # Open loop: 8 arrivals at once-ish, at most 4 in flight on the client.
            opened = await run_load(
                client,
                bodies,
                LoadSpec(request_rate=200.0, arrival="constant", max_concurrency=4, num_requests=8),
            )
        finally:
            await client.aclose()
    point = summarize(closed.records, concurrency=4)
    assert point["completed"] == 8
    # Half the requests wait a whole service time in the server's queue.
    assert point["e2e_from_scheduled_ms"]["p90"] > 1.6 * service_ms
    assert point["ttft_ms"]["p90"] > TTFT_MS + 0.6 * service_ms
    rate = summarize(opened.records, request_rate=200.0)
    assert rate["completed"] == 8
    assert rate["queue_ms"]["p99"] > 0.6 * service_ms
    assert rate["e2e_from_scheduled_ms"]["p99"] > rate["e2e_ms"]["p99"]
