from __future__ import annotations

import math

import pytest

from nim_async.bench.metrics import (
    SLO,
    STAT_KEYS,
    RequestRecord,
    parse_slo,
    percentile,
    summarize,
    summarize_values,
)


def rec(
    index: int = 0,
    *,
    sched: float = 0.0,
    start: float = 0.0,
    times: list[float],
    end: float,
    usage: int | None = None,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        scheduled_start=sched,
        start=start,
        end=end,
        token_times=times,
        output_tokens=usage,
        error=error,
    )


def test_per_request_definitions() -> None:
    r = rec(sched=0.5, start=1.0, times=[1.2, 1.25, 1.35, 1.40], end=1.41, usage=4)
    assert r.ttft == pytest.approx(0.2)
    assert r.ttst == pytest.approx(0.25)
    assert r.itls == pytest.approx([0.05, 0.10, 0.05])
    assert r.e2e == pytest.approx(0.41)
    assert r.e2e_from_scheduled == pytest.approx(0.91)
    assert r.queue == pytest.approx(0.5)
    # vLLM TPOT: (e2e - ttft) / (n - 1)
    assert r.tpot == pytest.approx((0.41 - 0.2) / 3)
    assert not r.usage_mismatch


def test_tpot_uses_usage_tokens_not_chunks() -> None:
    r = rec(times=[0.1, 0.2], end=0.3, usage=5)
    assert r.tokens == 5
    assert r.tpot == pytest.approx((0.3 - 0.1) / 4)
    assert r.usage_mismatch


def test_single_token_has_no_tpot_or_ttst() -> None:
    r = rec(times=[0.1], end=0.1, usage=1)
    assert r.tpot is None
    assert r.ttst is None
    assert r.itls == []


def test_percentile_matches_numpy_linear() -> None:
    data = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(data, 50) == 3.0
    assert percentile(data, 90) == pytest.approx(7.6)
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 10.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summarize_values() -> None:
    s = summarize_values([0.001, 0.002, 0.003, 0.004], scale=1000)
    assert set(s) == set(STAT_KEYS)
    assert s["mean"] == pytest.approx(2.5)
    assert s["p50"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(1.25))
    assert summarize_values([]) == dict.fromkeys(STAT_KEYS, None)


def test_summarize_load_point() -> None:
    records = [
        rec(0, sched=0.0, start=0.0, times=[0.1, 0.2, 0.3], end=0.3, usage=3),
        rec(1, sched=0.0, start=0.5, times=[0.7, 0.8, 0.9], end=1.0, usage=4),
        rec(2, sched=0.1, start=0.1, times=[], end=0.2, error="ServerError"),
        rec(3, sched=0.2, start=0.2, times=[], end=0.25, error="ServerError"),
        rec(4, sched=0.3, start=0.3, times=[], end=0.35, error="StreamError"),
    ]
    out = summarize(records, concurrency=2)
    assert out["concurrency"] == 2
    assert out["request_rate"] is None
    assert out["completed"] == 2
    assert out["failed"] == 3
    assert out["duration_s"] == pytest.approx(1.0)
    assert out["errors"] == {"ServerError": 2, "StreamError": 1}
    assert out["request_throughput"] == pytest.approx(2.0)
    assert out["output_token_throughput"] == pytest.approx(7.0)
    assert out["ttft_ms"]["mean"] == pytest.approx(150.0)
    assert out["itl_ms"]["mean"] == pytest.approx(100.0)
    assert out["tpot_ms"]["p50"] == pytest.approx(((0.2 / 2) + (0.3 / 3)) / 2 * 1000)
    assert out["e2e_from_scheduled_ms"]["p99"] == pytest.approx(993.0)
    assert out["queue_ms"]["mean"] == pytest.approx(100.0)
    assert out["usage_chunk_mismatches"] == 1
    assert out["goodput"] == pytest.approx(2.0)


def test_goodput_counts_only_requests_meeting_slo() -> None:
    records = [
        rec(0, times=[0.1, 0.2], end=0.2, usage=2),  # ttft 100, tpot 100, e2e 200
        rec(1, times=[0.4, 0.5], end=0.5, usage=2),  # ttft 400
        rec(2, times=[0.1, 0.9], end=1.0, usage=2),  # tpot 900, e2e 1000
    ]
    slo = parse_slo("ttft=200,tpot=150")
    assert slo == SLO(ttft_ms=200, tpot_ms=150)
    assert [slo.met_by(r) for r in records] == [True, False, False]
    out = summarize(records, duration=2.0, slo=slo)
    assert out["goodput"] == pytest.approx(0.5)
    assert out["goodput_fraction"] == pytest.approx(1 / 3)
    assert out["slo"] == {"ttft_ms": 200, "tpot_ms": 150}
    assert parse_slo("e2e=300ms").met_by(records[0])
    assert not parse_slo("e2e=300").met_by(records[2])


@pytest.mark.parametrize("bad", ["ttft", "foo=1", "ttft=abc", "tpot=-1"])
def test_parse_slo_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError, match="SLO"):
        parse_slo(bad)


def test_record_json_is_relative_and_in_ms() -> None:
    r = rec(sched=10.0, start=10.5, times=[10.6, 10.7], end=10.8, usage=2)
    data = r.to_json(origin=10.0)
    assert data["start"] == pytest.approx(0.5)
    assert data["ttft_ms"] == pytest.approx(100.0)
    assert data["itl_ms"] == [pytest.approx(100.0)]
    assert "token_times" not in data
