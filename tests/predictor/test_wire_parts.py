"""The IO-free stream accumulator, the one httpx error translation and the small server client."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from nim_async.errors import PredictionTimeoutError, ServiceUnavailableError, StreamError
from nim_async.http.client import ServerClient
from nim_async.http.errors import connection_problem, failure_kind, translate
from nim_async.http.health import ReadinessProbe
from nim_async.protocol.sse import SSEDecoder
from nim_async.protocol.stream import BadChunkError, StreamAccumulator, parse_completion
from nim_async.protocol.wire import wire_format_for


def _sse(*objs: Any) -> bytes:
    out = b""
    for obj in objs:
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        out += b"data: " + data + b"\n\n"
    return out


def _chunk(content: str | None = None, reasoning: str | None = None, **extra: Any) -> Any:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if "finish_reason" in extra:
        choice["finish_reason"] = extra.pop("finish_reason")
    return {"model": "m", "choices": [choice], **extra}


def test_accumulator_tokens_reasoning_usage_finish() -> None:
    acc = StreamAccumulator()
    dec = SSEDecoder()
    first = acc.feed(dec.feed(_sse(_chunk(reasoning="hm"), _chunk("Hel"), _chunk("lo"))))
    assert first == ["Hel", "lo"]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    rest = acc.feed(
        dec.feed(_sse(_chunk("", finish_reason="stop"), {"choices": [], "usage": usage}))
    )
    assert rest == []
    acc.feed(dec.feed(b"data: [DONE]\n\n"))
    result = acc.final()
    assert (result.content, result.reasoning, result.finish_reason) == ("Hello", "hm", "stop")
    assert result.usage == usage
    assert result.model == "m"
    assert result.complete
    assert acc.chunks == 5
    assert acc.arrivals == 3  # reasoning counts as a token arrival (TTFT of thinking models)


def test_accumulator_errors_keep_the_partial_text() -> None:
    acc = StreamAccumulator()
    events = SSEDecoder().feed(_sse(_chunk("par"), {"error": {"message": "engine died"}}))
    with pytest.raises(StreamError, match="engine died") as info:
        acc.feed(events)
    assert info.value.partial_text == "par"
    bad = StreamAccumulator()
    with pytest.raises(BadChunkError) as info2:
        bad.feed(SSEDecoder().feed(_sse(_chunk("a"), b"{not json")))
    assert info2.value.partial_text == "a"
    assert not StreamAccumulator().final().complete


def test_parse_completion_reads_the_same_result() -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "choices": [
                {"message": {"content": "x", "reasoning_content": "r"}, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    result = parse_completion(body)
    assert (result.content, result.reasoning, result.finish_reason) == ("x", "r", "length")
    with pytest.raises(ValueError, match="not an OpenAI chat completion"):
        parse_completion(b"<html>")


def _err(cls: type[httpx.HTTPError], cause: BaseException | None, text: str = "boom") -> Any:
    exc = cls(text)
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("cause", "problem"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnectionResetError(104, "reset"), "connection reset"),
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "TLS handshake failed"),
        (None, None),
    ],
)
def test_connection_problems_are_named(cause: BaseException | None, problem: str | None) -> None:
    exc = _err(httpx.ConnectError, cause)
    assert connection_problem(exc) == problem
    error = translate(exc, base_url="http://h:1", phase="connect")
    assert isinstance(error, ServiceUnavailableError)
    assert "http://h:1" in str(error)
    if problem is not None:
        assert problem in str(error)


def test_translate_by_phase_and_kind() -> None:
    base = "http://h:1"
    timeout = translate(httpx.ReadTimeout("t"), base_url=base, phase="read", timeout=3)
    assert isinstance(timeout, PredictionTimeoutError)
    assert "3 s" in str(timeout)
    connect = translate(httpx.ConnectTimeout("t"), base_url=base, phase="connect", timeout=3)
    assert isinstance(connect, ServiceUnavailableError)  # retryable: nobody answered
    assert "connect timeout" in str(connect)
    reset = _err(httpx.ReadError, ConnectionResetError(104, "reset"))
    broke = translate(reset, base_url=base, phase="read", partial_text="so far")
    assert isinstance(broke, StreamError)
    assert broke.partial_text == "so far"
    assert "connection reset" in str(broke)
    protocol = translate(httpx.RemoteProtocolError("x"), base_url=base, phase="connect")
    assert isinstance(protocol, ServiceUnavailableError)
    wrapped = ServiceUnavailableError(base)
    wrapped.__cause__ = httpx.ConnectError("x")
    assert failure_kind(wrapped) == "ConnectError"
    assert failure_kind(StreamError("x")) == "StreamError"


async def test_refused_connection_from_the_real_stack() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ServerClient(f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        with pytest.raises(ServiceUnavailableError, match="connection refused"):
            await client.post(b"{}", stream=False)
        assert not await client.health_ready()
    finally:
        await client.aclose()


@pytest.fixture
async def vllm_like() -> AsyncIterator[dict[str, Any]]:
    """A loopback server with vLLM's endpoints only (/health, /version, /v1/models)."""
    state: dict[str, Any] = {"hits": []}

    async def handle(request: web.Request) -> web.Response:
        state["hits"].append(request.path)
        if request.path == "/health":
            return web.Response(status=200)
        if request.path == "/version":
            return web.json_response({"version": "0.11.0"})
        if request.path == "/v1/models":
            return web.json_response({"data": [{"id": "m", "owned_by": "vllm"}]})
        return web.json_response({"detail": "Not Found"}, status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_health_ready_and_readiness_probe_accept_vllm_health(vllm_like: Any) -> None:
    client = ServerClient(vllm_like["url"], timeout=5.0)
    try:
        assert await client.health_ready()
        assert vllm_like["hits"] == ["/v1/health/ready", "/health"]
        assert await client.health_ready()
        assert vllm_like["hits"][-1] == "/health"  # remembered: one request per poll
        assert vllm_like["hits"].count("/v1/health/ready") == 1
        info = await client.server_info()
    finally:
        await client.aclose()
    assert info.vllm_version == {"version": "0.11.0"}
    assert info.owned_by == "vllm"
    wire = wire_format_for(info.nim_version, info.metadata, vllm=info.vllm_version)
    assert wire.guided == "structured_outputs"
    assert wire.server == "vLLM 0.11.0"
    async with ReadinessProbe(vllm_like["url"]) as probe:
        await probe.wait()
        assert probe.ready_at is not None
        assert await probe.models() == ["m"]


async def test_health_ready_is_false_while_a_nim_loads(start_emulator: Any) -> None:
    async with start_emulator(startup_seconds=30) as emu:
        client = ServerClient(emu.url, timeout=5.0)
        try:
            assert not await client.health_ready()  # 503 on /v1/health/ready: no /health asked
        finally:
            await client.aclose()


async def test_auto_dialect_waits_for_a_server_that_starts_late(image_factory: Any) -> None:
    """Learning the server runs under the retry policy, like a send: a restarting server is fine."""
    from nim_async import AsyncNIMPredictor
    from tests.predictor.conftest import Recorder

    # bound but not listening: connections are refused, and no other process can take the port
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    rec = Recorder()
    rec.version = {"release": "1.0.3", "api": "1.0.0"}  # a NIM 1.x: nvext
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", rec.chat)
    app.router.add_get("/v1/version", rec.get_version)
    runner = web.AppRunner(app)
    await runner.setup()

    async def start_later() -> None:
        await asyncio.sleep(0.4)
        await web.SockSite(runner, sock).start()

    starter = asyncio.create_task(start_later())
    try:
        async with AsyncNIMPredictor("m", "vqa", port=port, retries=6) as p:
            result = await p(image_factory(size=(16, 16)), "Q?")
        assert result.raw_output
        assert "nvext" in rec.bodies[0]
    finally:
        await starter
        await runner.cleanup()
        sock.close()
