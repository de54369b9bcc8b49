"""Facts about the real vLLM 0.32 server that the client, the emulator and the benchmark rely on."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from nim_async.bench.server_metrics import SERVER_METRICS, parse_prometheus, server_deltas

# Every server metric `nim-async bench` reads, taken from the bench itself: histograms are read
# as <name>_sum / <name>_count, the rest as plain samples. For each figure, the name vLLM 0.32
# exposes must be the bench's first choice (older names follow as fallbacks).
HISTOGRAM_FIGURES = ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms")
BENCH_HISTOGRAMS = [f"vllm:{SERVER_METRICS[f][0]}" for f in HISTOGRAM_FIGURES]
BENCH_COUNTERS = [f"vllm:{SERVER_METRICS[f][0]}" for f in ("generation_tokens", "prompt_tokens")]
BENCH_GAUGES = [f"vllm:{SERVER_METRICS[f][0]}" for f in ("running", "waiting")]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def _samples(text: str) -> dict[str, float]:
    """``{sample name: value summed over labels}`` of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def _types(text: str) -> dict[str, str]:
    return {
        parts[2]: parts[3]
        for parts in (line.split() for line in text.splitlines() if line.startswith("# TYPE "))
        if len(parts) == 4
    }


@pytest.fixture(scope="module")
def client(vllm_server: Any) -> Any:
    with httpx.Client(base_url=vllm_server.url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def exposition(client: httpx.Client, vllm_server: Any) -> str:
    # one finished request first, so every histogram has samples
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": vllm_server.model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 3,
            "ignore_eos": True,
        },
    )
    assert r.status_code == 200, r.text
    m = client.get("/metrics")
    assert m.status_code == 200
    return m.text


def test_version_is_real_vllm_0_32(client: httpx.Client, vllm_server: Any) -> None:
    r = client.get("/version")
    assert r.status_code == 200
    assert r.json() == {"version": "0.32.0"}
    assert vllm_server.version == "0.32.0"


def test_models_lists_the_served_name_and_max_model_len(
    client: httpx.Client, vllm_server: Any
) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == vllm_server.model == "cosmos-reason1-7b"
    assert card["max_model_len"] == 4096
    assert card["owned_by"] == "vllm"
    assert card["object"] == "model"


def test_health_is_vllms_and_nim_endpoints_are_absent(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    # NIM's endpoints: a client must not require them from a vLLM server
    for path in ("/v1/health/ready", "/v1/health/live", "/v1/version", "/v1/metadata"):
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize("name", BENCH_HISTOGRAMS)
def test_bench_histogram_exists(exposition: str, name: str) -> None:
    samples, types = _samples(exposition), _types(exposition)
    assert types.get(name) == "histogram", (
        f"nim-async bench reads {name} first; vLLM 0.32 has no such histogram"
    )
    assert f"{name}_sum" in samples
    assert samples[f"{name}_count"] >= 1


def test_bench_server_figures_come_from_vllms_own_histograms(exposition: str) -> None:
    """server_deltas() over the real exposition reads each figure from the right histogram."""
    values = parse_prometheus(exposition)
    figures = server_deltas({}, values)
    assert figures is not None
    for figure in HISTOGRAM_FIGURES:
        name = f"vllm:{SERVER_METRICS[figure][0]}"
        expected = values[f"{name}_sum"] / values[f"{name}_count"] * 1000.0
        assert figures[figure] == pytest.approx(expected), figure
    assert figures["requests"] == values["vllm:e2e_request_latency_seconds_count"]


@pytest.mark.parametrize("name", BENCH_COUNTERS)
def test_bench_counter_exists(exposition: str, name: str) -> None:
    samples = _samples(exposition)
    assert name in samples, f"nim-async bench reads {name}; vLLM 0.32 does not expose it"
    assert samples[name] >= 1


@pytest.mark.parametrize("name", BENCH_GAUGES)
def test_bench_gauge_exists(exposition: str, name: str) -> None:
    types = _types(exposition)
    assert types.get(name) == "gauge", f"nim-async bench reads {name}; vLLM 0.32 lacks it"


def test_cache_gauge_is_kv_cache_usage_perc(exposition: str) -> None:
    # vLLM 0.32 has the renamed gauge only (vllm:gpu_cache_usage_perc is the old name)
    types = _types(exposition)
    assert types.get("vllm:kv_cache_usage_perc") == "gauge"
    assert "vllm:gpu_cache_usage_perc" not in types


def test_metrics_carry_engine_and_model_name_labels(exposition: str, vllm_server: Any) -> None:
    line = next(
        line for line in exposition.splitlines() if line.startswith("vllm:num_requests_running{")
    )
    assert f'model_name="{vllm_server.model}"' in line
    assert 'engine="' in line


def test_ignored_request_fields_are_logged(
    client: httpx.Client, vllm_server: Any, server_log_mark: Any, server_log_since: Any
) -> None:
    # The tier's witness for "no field silently dropped": vLLM accepts unknown top-level fields
    # (HTTP 200) and names them in one DEBUG line. (No guided_* here: vLLM warns about those
    # only once per process, and that one warning is left for the tests that need it.)
    body = {
        "model": vllm_server.model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    }
    mark = server_log_mark()
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert vllm_server.ignored_fields(server_log_since(mark)) == []

    mark = server_log_mark()
    r = client.post("/v1/chat/completions", json={**body, "nim_async_probe": {"x": 1}})
    assert r.status_code == 200
    (line,) = vllm_server.ignored_fields(server_log_since(mark))
    assert "DEBUG" in line
    assert line.endswith("ignored: {'nim_async_probe'}")
