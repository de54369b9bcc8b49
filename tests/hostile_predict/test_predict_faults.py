"""Hostile servers and inputs against the predictor (issue 14, cases 3, 4, 5, 7, 8).

Every server is a small fault server on 127.0.0.1 written here (aiohttp, or raw asyncio for a
TCP reset). The outer ``asyncio.wait_for(..., HANG)`` only turns a hang into a failure; no
assertion is about how long anything took.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import socket
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from nim_async import errors
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.sync.predictor import NIMPredictor

MODEL = "cosmos-reason1-7b"
HANG = 20.0  # a guard against hanging, far above every timeout used here

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


ANSWER = {
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": '{"vqa": {"answer": "red"}}'},
            "finish_reason": "stop",
        }
    ]
}


class Server:
    """An aiohttp app on an ephemeral loopback port; counts chat requests."""

    def __init__(self) -> None:
        self.chat_calls = 0
        self.url = ""
        self.port = 0


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(chat: Handler | None = None, **routes: Handler) -> Server:
        server = Server()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        if chat is not None:

            async def counted(request: web.Request) -> web.StreamResponse:
                server.chat_calls += 1
                await request.read()
                result = chat(request)
                return await result if inspect.isawaitable(result) else result

            app.router.add_post("/v1/chat/completions", counted)
        for path, handler in routes.items():

            async def route(request: web.Request, handler: Handler = handler) -> Any:
                return await handler(request)

            app.router.add_get("/" + path, route)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server.port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{server.port}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def predictor(server: Server, **kwargs: Any) -> AsyncNIMPredictor:
    kwargs.setdefault("dialect", "openai")
    return AsyncNIMPredictor(MODEL, "vqa", base_url=server.url, **kwargs)


async def drip(request: web.Request, content_type: str, piece: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    while True:  # one small piece every 0.1 s, forever
        await response.write(piece)
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- case 3: time


async def test_timeout_is_a_deadline_for_a_dripping_non_streamed_answer(serve: Any) -> None:
    server = await serve(lambda r: drip(r, "application/json", b" "))
    async with predictor(server, timeout=1, retries=0) as p:
        with pytest.raises(errors.PredictionTimeoutError, match="timeout=1 s"):
            await asyncio.wait_for(p(_jpeg()), HANG)


async def test_sse_comments_do_not_reset_the_stream_idle_timeout(serve: Any) -> None:
    server = await serve(lambda r: drip(r, "text/event-stream", b": keep-alive\n\n"))
    async with predictor(server, timeout=1, retries=0) as p:

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                async for _ in stream:
                    pass

        with pytest.raises(errors.PredictionTimeoutError, match="no data event"):
            await asyncio.wait_for(consume(), HANG)


async def test_stream_deadline_bounds_a_stream_that_never_ends(serve: Any) -> None:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    server = await serve(lambda r: drip(r, "text/event-stream", event))
    async with predictor(server, timeout=5, retries=0, stream_deadline=1) as p:
        tokens: list[str] = []

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                async for token in stream:
                    tokens.append(token)

        with pytest.raises(errors.PredictionTimeoutError, match="stream_deadline=1 s"):
            await asyncio.wait_for(consume(), HANG)
    assert tokens  # data events kept arriving: only the total deadline ended it


async def test_timeout_is_a_deadline_for_an_image_download(serve: Any) -> None:
    server = await serve(
        lambda r: web.json_response(ANSWER), **{"img.jpg": lambda r: drip(r, "image/jpeg", b"\xff")}
    )
    async with predictor(server, timeout=1, retries=0) as p:
        with pytest.raises(errors.MediaError, match="within 1 s"):
            await asyncio.wait_for(p(server.url + "/img.jpg"), HANG)
    assert server.chat_calls == 0


@pytest.mark.parametrize("wait", [30, 3600])
async def test_retry_after_past_the_deadline_fails_at_once_naming_it(serve: Any, wait: int) -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "busy"}}, status=503, headers={"Retry-After": str(wait)}
        )

    server = await serve(busy)
    async with predictor(server, timeout=3, retries=5) as p:
        with pytest.raises(errors.ServerError, match=f"Retry-After: {wait} s") as info:
            await asyncio.wait_for(p(_jpeg()), HANG)  # 71095e2: 4 sends, still going at 25 s
    assert info.value.retry_after == wait
    assert server.chat_calls == 1


# --------------------------------------------------------------------------- case 4: caps


async def test_an_oversized_body_is_refused_naming_the_cap(serve: Any) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # chunked: no Content-Length to refuse up front
        for _ in range(64):
            await response.write(b" " * 65536)
        return response

    server = await serve(huge)
    async with predictor(server, max_response_bytes=1_000_000, retries=0) as p:
        with pytest.raises(errors.ResponseTooLargeError, match="1000000 bytes") as info:
            await asyncio.wait_for(p(_jpeg()), HANG)
    assert info.value.limit == 1_000_000


async def test_a_declared_oversized_body_is_refused_before_reading(serve: Any) -> None:
    server = await serve(lambda r: web.Response(body=b" " * 2_000_000))
    async with predictor(server, max_response_bytes=1_000_000, retries=0) as p:
        with pytest.raises(errors.ResponseTooLargeError, match="Content-Length 2000000"):
            await asyncio.wait_for(p(_jpeg()), HANG)


async def test_a_huge_sse_line_is_refused_naming_the_cap(serve: Any) -> None:
    async def line(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: ")
        for _ in range(64):
            await response.write(b"x" * 65536)  # 4 MB, never a newline
        return response

    server = await serve(line)
    async with predictor(server, max_event_bytes=1_000_000, retries=0) as p:

        async def consume() -> None:
            async with p.stream(_jpeg()) as stream:
                await stream.get_final_response()

        with pytest.raises(errors.ResponseTooLargeError, match="1000000 bytes") as info:
            await asyncio.wait_for(consume(), HANG)
    assert info.value.what == "server-sent event"


async def test_an_oversized_image_download_is_refused_naming_the_cap(serve: Any) -> None:
    big = _jpeg((1200, 900))

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(big)
        return response

    server = await serve(lambda r: web.json_response(ANSWER), **{"img.jpg": chunked})
    assert len(big) > 10_000
    async with predictor(server, max_download_bytes=10_000, retries=0) as p:
        with pytest.raises(errors.MediaError, match="cap of 10000 bytes"):
            await asyncio.wait_for(p(server.url + "/img.jpg"), HANG)
    assert server.chat_calls == 0


# --------------------------------------------------------------------------- case 5: images


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side (tiny file: one zlib stream of zero rows)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = zlib.compress(b"\x00" * (side + 1) * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


async def test_a_pixel_bomb_png_is_refused_before_decoding_without_a_warning(
    serve: Any,
) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    bomb = _png_bomb(10000)  # 100 M pixels: Pillow warns (over 89 M) but would decode it
    async with predictor(server) as p:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(errors.MediaError, match="max_image_pixels"):
                await p(bomb)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert server.chat_calls == 0


async def test_the_pixel_cap_is_configurable(serve: Any) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    async with predictor(server, max_image_pixels=1000) as p:
        with pytest.raises(errors.MediaError, match="cap of 1000 pixels"):
            await p(_jpeg((64, 48)))
    assert server.chat_calls == 0


async def test_a_large_jpeg_is_reduced_on_load_and_passes_the_cap(serve: Any) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    big = _jpeg((4000, 3000))  # 12 M pixels, decoded at 1/8 scale for a small budget
    async with predictor(server, max_image_pixels=1_000_000, max_pixels=200_000) as p:
        result = await p(big)
    assert result.image_size == (4000, 3000)
    assert server.chat_calls == 1


@pytest.mark.parametrize("keep", [0.5, 0.9])
async def test_a_truncated_jpeg_is_a_media_error_and_nothing_is_sent(
    serve: Any, keep: float
) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    whole = _jpeg((320, 240))
    async with predictor(server) as p:
        with pytest.raises(errors.MediaError):
            await p(whole[: int(len(whole) * keep)])
        assert server.chat_calls == 0
        await p(whole)  # checked once, then remembered as decodable
        await p(bytes(whole))
        with pytest.raises(errors.MediaError):  # a cut copy of a remembered image: checked
            await p(whole[: int(len(whole) * keep)])
    assert server.chat_calls == 2


async def test_an_aspect_ratio_over_200_is_a_media_error_before_sending(serve: Any) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    async with predictor(server, box_format="qwen25-abs") as p:
        with pytest.raises(errors.MediaError, match="200"):
            await p(_jpeg((2010, 10)))
    assert server.chat_calls == 0


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_every_exif_orientation_is_applied_as_pillow_would(
    serve: Any, orientation: int
) -> None:
    from PIL import ImageOps

    sent: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json()
        part = next(p for p in body["messages"][-1]["content"] if p["type"] == "image_url")
        sent.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
        return web.json_response(ANSWER)

    server = await serve(record)
    img = Image.new("RGB", (40, 24))
    for x in range(40):
        for y in range(24):
            img.putpixel((x, y), (x * 6, y * 10, 128))  # no symmetry: every transpose differs
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    async with predictor(server) as p:
        result = await p(buf.getvalue())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB")
    assert result.image_size == expected.size
    got = Image.open(io.BytesIO(sent[0])).convert("RGB")
    assert got.size == expected.size
    assert got.tobytes() == expected.tobytes()  # PNG in, PNG out: lossless


# --------------------------------------------------------------------------- case 7: errors


async def test_a_reset_after_the_request_does_not_blame_the_container() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    tcp = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with AsyncNIMPredictor(MODEL, "vqa", port, dialect="openai", retries=0) as p:
            with pytest.raises(errors.NIMPredictionError) as info:
                await asyncio.wait_for(p(_jpeg()), HANG)
    finally:
        tcp.close()
        await tcp.wait_closed()
    message = str(info.value)
    assert "container running" not in message
    assert "reset" in message or "closed the connection" in message


async def test_each_connection_failure_is_named_and_none_blames_the_container(
    serve: Any,
) -> None:
    plain = await serve(lambda r: web.json_response(ANSWER))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    full = socket.socket()  # a listener whose backlog is full: a connect is never answered
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    waiting = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(full.getsockname())
        waiting.append(client)
    cases = {
        "connection refused": f"http://127.0.0.1:{free}",
        "DNS lookup failed": "http://no-such-host.invalid:8000",
        "TLS handshake failed": "https" + plain.url[4:],  # TLS to a plain-HTTP server
        "timeout=2 s": f"http://127.0.0.1:{full.getsockname()[1]}",
    }
    seen = {}
    try:
        for cause, url in cases.items():
            async with AsyncNIMPredictor(
                MODEL, "vqa", base_url=url, dialect="openai", timeout=2, retries=0
            ) as p:
                with pytest.raises(errors.NIMPredictionError) as info:
                    await asyncio.wait_for(p(_jpeg()), HANG)
            seen[cause] = info.value
    finally:
        for client in waiting:
            client.close()
        full.close()
    for cause, error in seen.items():
        assert cause in str(error), (cause, str(error))  # 71095e2: "No NIM answers at ..." x4
        assert "container running" not in str(error) or cause == "connection refused"
    assert isinstance(seen["timeout=2 s"], errors.PredictionTimeoutError)
    assert plain.chat_calls == 0


async def test_bytes_user_prompt_is_a_clear_value_error(serve: Any) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    async with predictor(server) as p:
        with pytest.raises(errors.InvalidParameterError, match="decode") as info:
            await p(_jpeg(), user_prompt=b"what colour?")  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
        with pytest.raises(errors.InvalidParameterError, match="user_prompt"):
            p.stream(_jpeg(), user_prompt=b"x")  # type: ignore[arg-type]
    assert server.chat_calls == 0


async def test_a_port_given_as_digits_is_accepted(serve: Any) -> None:
    server = await serve(lambda r: web.json_response(ANSWER))
    async with AsyncNIMPredictor(MODEL, "vqa", str(server.port), dialect="openai") as p:  # type: ignore[arg-type]
        assert p.base_url.endswith(f":{server.port}")
        assert (await p(_jpeg())).answer == "red"  # type: ignore[attr-defined]
    with pytest.raises(errors.InvalidParameterError, match="port"):
        AsyncNIMPredictor(MODEL, "vqa", "eighty")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        NIMPredictor(MODEL, "vqa", port="0")  # type: ignore[arg-type]
    with NIMPredictor(MODEL, "vqa", port=str(server.port), dialect="openai") as sync:  # type: ignore[arg-type]
        assert sync.base_url.endswith(f":{server.port}")


def test_a_predictor_used_from_a_second_asyncio_run_works_quietly() -> None:
    script = textwrap.dedent(
        """
        import asyncio, io, threading
        from aiohttp import web
        from PIL import Image
        from nim_async.predict.predictor import AsyncNIMPredictor

        buf = io.BytesIO(); Image.new("RGB", (32, 32)).save(buf, "JPEG")
        ANSWER = {"choices": [{"index": 0, "finish_reason": "stop", "message":
                  {"role": "assistant", "content": '{"vqa": {"answer": "red"}}'}}]}
        ready = threading.Event(); port = []

        async def chat(request):
            await request.read()
            return web.json_response(ANSWER)

        def serve():
            loop = asyncio.new_event_loop()
            app = web.Application(); app.router.add_post("/v1/chat/completions", chat)
            runner = web.AppRunner(app); loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0); loop.run_until_complete(site.start())
            port.append(runner.addresses[0][1]); ready.set(); loop.run_forever()

        threading.Thread(target=serve, daemon=True).start(); ready.wait()
        p = AsyncNIMPredictor("cosmos-reason1-7b", "vqa", port[0], dialect="openai")

        async def once():
            results = await asyncio.gather(p(buf.getvalue()), p(buf.getvalue()))
            return results[0].answer

        print(asyncio.run(once()), asyncio.run(once()))
        asyncio.run(p.aclose())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["red", "red"]
    assert done.stderr == ""


# --------------------------------------------------------------------------- issue 15: reuse


async def test_the_reused_body_follows_params_prompt_and_model(serve: Any) -> None:
    from nim_async import NIMSamplingParams

    bodies: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response(ANSWER)

    server = await serve(record)
    async with predictor(server) as p:
        await p(_jpeg(), user_prompt="one?", sampling_params=NIMSamplingParams(max_tokens=7))
        await p(_jpeg(), user_prompt="one?", sampling_params=NIMSamplingParams(max_tokens=9))
        await p(_jpeg((32, 32)), user_prompt="two?")
        p.model_name = "other-model"
        await p(_jpeg(), user_prompt="two?")
    assert [b["max_tokens"] for b in bodies[:2]] == [7, 9]
    texts = [
        [part for part in b["messages"][-1]["content"] if part["type"] == "text"] for b in bodies
    ]
    assert [t[0]["text"] for t in texts] == ["one?", "one?", "two?", "two?"]
    assert [b["model"] for b in bodies] == [MODEL, MODEL, MODEL, "other-model"]
    images = [
        [part for part in b["messages"][-1]["content"] if part["type"] == "image_url"]
        for b in bodies
    ]
    assert images[0][0]["image_url"]["url"] != images[2][0]["image_url"]["url"]


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"timeout": float("inf")}, "timeout"),  # HEAD: accepted, a call could hang for good
        ({"timeout": float("nan")}, "timeout"),  # HEAD: a plain ValueError
        ({"timeout": "3"}, "timeout"),  # HEAD: TypeError
        ({"retries": float("inf")}, "retries"),  # HEAD: accepted
        ({"retries": 1.5}, "retries"),
        ({"max_pixels": float("nan")}, "max_pixels"),  # HEAD: a MediaError blaming the image
        ({"max_connections": 0}, "max_connections"),
        ({"dialect": "json"}, "dialect"),
    ],
)
def test_predictor_arguments_are_checked_with_our_errors(given: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidParameterError) as info:
        AsyncNIMPredictor(MODEL, "vqa", **given)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert field in str(info.value)
    with pytest.raises(errors.InvalidParameterError):
        NIMPredictor(MODEL, "vqa", **given)


def test_config_startup_timeout_must_be_finite() -> None:
    from nim_async import NIMConfig

    with pytest.raises(errors.InvalidConfigError, match="startup_timeout") as info:
        NIMConfig(nvidia_api_key="nvapi-test-0000", startup_timeout=float("inf"))
    assert isinstance(info.value, ValueError)  # HEAD: accepted (a deploy waiting for ever)
