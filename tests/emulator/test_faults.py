"""Fault injection: failure rate, mid-stream disconnects, the emulator stopping."""

from __future__ import annotations

import asyncio

import httpx
import pytest

BODY = {"messages": [{"role": "user", "content": "What colour is it?"}]}


async def _read_stream(url: str, got: list[str]) -> None:
    async with (
        httpx.AsyncClient(base_url=url) as c,
        c.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r,
    ):
        async for line in r.aiter_lines():
            if line:
                got.append(line)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_fail_rate_one_fails_every_chat(start_emulator, api, status):
    async with start_emulator(fail_rate=1.0, fail_status=status) as emu:
        for _ in range(3):
            r = await api.post(emu.url, BODY)
            assert r.status_code == status
            assert r.json()["error"]["code"] == status
            assert "injected" in r.json()["error"]["message"]
        async with httpx.AsyncClient(base_url=emu.url) as c:
            assert (await c.get("/v1/health/ready")).status_code == 200


async def test_fail_rate_half_mixes(start_emulator, api):
    async with (
        start_emulator(fail_rate=0.5, seed=3) as emu,
        httpx.AsyncClient(base_url=emu.url) as c,
    ):
        codes = [(await c.post("/v1/chat/completions", json=BODY)).status_code for _ in range(30)]
    assert set(codes) == {200, 503}


async def test_disconnect_after_cuts_the_stream(start_emulator, api):
    async with start_emulator(disconnect_after=2) as emu:
        got: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            await _read_stream(emu.url, got)
        assert len(got) == 3  # role chunk + 2 content chunks
        assert all("[DONE]" not in line for line in got)
        # a long non-streaming answer is dropped; a short one is served; the server lives on
        with pytest.raises(httpx.RemoteProtocolError):
            await api.post(emu.url, BODY)
        r = await api.post(emu.url, {**BODY, "max_tokens": 2})
        assert r.status_code == 200


async def test_exit_after_stops_serving(start_emulator, api):
    async with start_emulator(exit_after=0.2) as emu:
        assert (await api.post(emu.url, BODY)).status_code == 200
        reason = await asyncio.wait_for(emu.wait_stopped(), 10)
        assert reason == "exit_after"
        with pytest.raises(httpx.ConnectError):
            await api.post(emu.url, BODY)


async def test_client_disconnect_does_not_hurt_the_server(start_emulator, api):
    async with start_emulator(itl_ms=5) as emu:
        async with (
            httpx.AsyncClient(base_url=emu.url) as c,
            c.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r,
        ):
            async for _ in r.aiter_lines():
                break  # walk away mid-stream
        assert (await api.post(emu.url, BODY)).status_code == 200
