from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from nim_async.http.transport import AiohttpTransport


async def test_streams_body_in_chunks(http_server: Any) -> None:
    url = f"{http_server.url}/sse?n=50"
    async with (
        httpx.AsyncClient(transport=AiohttpTransport(max_connections=4)) as client,
        client.stream("POST", url, content=b"x" * 1000) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        body = b"".join([c async for c in r.aiter_raw()])
    assert body.count(b"data: ") == 51
    assert body.endswith(b"data: [DONE]\n\n")


async def test_request_method_headers_and_body_arrive(http_server: Any) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        r = await client.put(
            f"{http_server.url}/echo", content=b"a" * 123_456, headers={"X-Thing": "yes"}
        )
    assert r.status_code == 201
    data = r.json()
    assert data["method"] == "PUT"
    assert data["body_len"] == 123_456
    assert data["headers"]["X-Thing"] == "yes"
    assert data["headers"]["Content-Length"] == "123456"


async def test_pool_reuse_opens_no_new_connections_after_warmup(http_server: Any) -> None:
    transport = AiohttpTransport(max_connections=8)
    async with httpx.AsyncClient(transport=transport) as client:

        async def one() -> None:
            async with client.stream("POST", f"{http_server.url}/sse?n=20") as r:
                async for _ in r.aiter_raw():
                    pass

        import asyncio

        await asyncio.gather(*(one() for _ in range(8)))
        warm = transport.connections_opened
        assert 1 <= warm <= 8
        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(8)))
        assert transport.connections_opened == warm
    assert len(http_server.connections) == warm


async def test_pool_is_limited_to_max_connections(http_server: Any) -> None:
    import asyncio

    transport = AiohttpTransport(max_connections=2)
    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(client.post(f"{http_server.url}/echo") for _ in range(10)))
    assert transport.connections_opened <= 2


async def test_connect_error_is_httpx_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_read_timeout_is_httpx_read_timeout(http_server: Any) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=0.3) as client:

        async def read_all() -> None:
            async with client.stream("GET", f"{http_server.url}/slow") as r:
                async for _ in r.aiter_raw():
                    pass

        with pytest.raises(httpx.ReadTimeout):
            await read_all()


async def test_dropped_connection_is_httpx_protocol_error(http_server: Any) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{http_server.url}/drop")


async def test_unsupported_scheme_is_httpx_error() -> None:
    transport = AiohttpTransport()
    request = httpx.Request("GET", "ftp://127.0.0.1/x")
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(request)
    await transport.aclose()


async def test_early_close_does_not_return_a_half_read_connection(
    http_server: Any,
) -> None:
    transport = AiohttpTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("POST", f"{http_server.url}/sse?n=2000") as r:
            async for _ in r.aiter_raw():
                break
        # The next request must not read leftovers of the abandoned body.
        r2 = await client.post(f"{http_server.url}/echo", content=b"z")
        assert r2.json()["body_len"] == 1


async def test_closed_transport_refuses_requests() -> None:
    transport = AiohttpTransport()
    await transport.aclose()
    with pytest.raises(RuntimeError):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:1/"))


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        AiohttpTransport(max_connections=0)


async def test_predictor_default_transport_reuses_one_connection() -> None:
    """The predictor's default (measured) transport: streams read to the end reuse the pool."""
    from nim_async.bench.images import synthetic_images
    from nim_async.bench.loopback_server import LoopbackSSEServer
    from nim_async.config import NIMSamplingParams
    from nim_async.predict.predictor import AsyncNIMPredictor

    server = LoopbackSSEServer()
    url = await server.start()
    image = synthetic_images(1, [(64, 48)])[0].data
    params = NIMSamplingParams(max_tokens=5, ignore_eos=True)
    try:
        async with AsyncNIMPredictor(
            "loopback", "vqa", base_url=url, max_connections=4, dialect="openai"
        ) as p:
            assert isinstance(p._http.transport, AiohttpTransport)
            for _ in range(10):
                async with p.stream(image, sampling_params=params) as stream:
                    tokens = [t async for t in stream]
                assert tokens == [" tok"] * 5
                assert stream.usage is not None
                assert stream.usage.completion_tokens == 5
        assert server.connections == 1
        assert server.requests == 10
    finally:
        await server.close()
