from __future__ import annotations

import random
import statistics
from pathlib import Path

import httpx
import pytest

from nim_async.bench.images import load_folder, parse_sizes, synthetic_images
from nim_async.bench.load import LoadSpec, arrival_gaps
from nim_async.bench.loopback_server import LoopbackSSEServer
from nim_async.bench.server_metrics import parse_prometheus, server_deltas
from nim_async.http.transport import AiohttpTransport
from nim_async.protocol.sse import SSEDecoder

PROM_BEFORE = """# HELP vllm:time_to_first_token_seconds x
vllm:time_to_first_token_seconds_sum{model_name="m"} 1.0
vllm:time_to_first_token_seconds_count{model_name="m"} 10
vllm:e2e_request_latency_seconds_count{model_name="m"} 10
vllm:generation_tokens_total{model_name="m"} 100
"""
PROM_AFTER = """vllm:time_to_first_token_seconds_sum{model_name="m"} 3.0
vllm:time_to_first_token_seconds_count{model_name="m"} 20
vllm:e2e_request_latency_seconds_count{model_name="m"} 20
vllm:generation_tokens_total{model_name="m"} 600
vllm:num_requests_running{model_name="m"} 2
vllm:time_per_output_token_seconds_sum{model_name="m",le="x"} NaN
"""


def test_server_deltas_from_prometheus_text() -> None:
    before, after = parse_prometheus(PROM_BEFORE), parse_prometheus(PROM_AFTER)
    d = server_deltas(before, after)
    assert d is not None
    assert d["ttft_ms"] == pytest.approx(200.0)
    assert d["requests"] == 10
    assert d["generation_tokens"] == 500
    assert d["running"] == 2
    assert d["tpot_ms"] is None
    assert server_deltas(None, None) is None


def test_load_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(concurrency=2, request_rate=1.0)
    with pytest.raises(ValueError, match="num_requests or duration"):
        LoadSpec(concurrency=2, num_requests=None)
    with pytest.raises(ValueError, match="burstiness"):
        LoadSpec(request_rate=1.0, burstiness=0)


@pytest.mark.parametrize(
    ("arrival", "burstiness"),
    [("poisson", 1.0), ("gamma", 0.25), ("gamma", 4.0), ("constant", 1.0)],
)
def test_arrival_gaps_have_the_requested_mean(arrival: str, burstiness: float) -> None:
    rng = random.Random(1)
    gaps = [arrival_gaps(10.0, arrival, burstiness, rng) for _ in range(20000)]  # type: ignore[arg-type]
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.05)
    if arrival == "gamma":
        # coefficient of variation = 1/sqrt(shape): bursty below 1, smooth above
        cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
        assert cv == pytest.approx(burstiness**-0.5, rel=0.1)


def test_synthetic_images_and_folder(tmp_path: Path) -> None:
    assert parse_sizes("640x480, 32x32") == [(640, 480), (32, 32)]
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_sizes("640")
    imgs = synthetic_images(6, [(320, 240), (64, 64)], seed=3)
    assert {i.size for i in imgs} <= {(320, 240), (64, 64)}
    assert imgs[0].data.startswith(b"\xff\xd8")
    assert synthetic_images(6, [(320, 240), (64, 64)], seed=3)[0].data == imgs[0].data
    small = synthetic_images(1, [(320, 240)], noise=0.0)[0]
    big = synthetic_images(1, [(320, 240)], noise=0.5)[0]
    assert len(big.data) > 3 * len(small.data)
    for i, img in enumerate(imgs[:2]):
        (tmp_path / f"{i}.jpg").write_bytes(img.data)
    (tmp_path / "notes.txt").write_text("x")
    loaded = load_folder(tmp_path)
    assert [i.name for i in loaded] == ["0.jpg", "1.jpg"]
    with pytest.raises(ValueError, match=r"no \.jpg"):
        load_folder(tmp_path / "..", limit=0)


async def test_loopback_server_streams_max_tokens_and_counts_connections() -> None:
    server = LoopbackSSEServer()
    url = await server.start()
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=2)) as client:
            for _ in range(3):
                body = b'{"model":"m","max_tokens": 7,"stream":true}'
                async with client.stream("POST", f"{url}/v1/chat/completions", content=body) as r:
                    raw = b"".join([c async for c in r.aiter_raw()])
                events = SSEDecoder().feed(raw)
                assert len(events) == 7 + 3  # tokens, finish, usage, [DONE]
                assert events[-1].data == b"[DONE]"
                assert b'"completion_tokens":7' in events[-2].data
            stats = (await client.get(f"{url}/stats")).json()
        assert stats["connections"] == 1
        assert stats["requests"] == 4
        assert stats["cpu_s"] > 0
    finally:
        await server.close()
