"""A minimal zero-delay OpenAI-style SSE server, the ceiling for client-overhead measurements.

It is not the emulator and not a model: it ignores the prompt and the image and streams
``max_tokens`` identical content chunks as fast as the client reads them. It speaks just enough
HTTP/1.1 (keep-alive, ``Content-Length`` request bodies, chunked responses) on a raw asyncio
protocol, so its per-token cost stays far below any client's. Like vLLM under load, it writes
one chunk per stream per scheduling step, round-robin over the open streams; a stream whose
socket buffer is full is skipped until it drains.

``GET /stats`` returns ``{"connections": N, "requests": M, "cpu_s": S}`` (TCP connections
accepted so far, requests answered, the server process's CPU seconds), so a benchmark can check
that a warmed-up client opens no new connections and that the server was not the bottleneck.

Run it in a child process: ``python -m nim_async.bench.loopback_server`` prints its URL and
serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections import deque

import orjson

__all__ = ["LoopbackSSEServer", "main"]

_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
_HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: object) -> bytes:
    return _frame(b"data: " + orjson.dumps(obj) + b"\n\n")


_BASE = {
    "id": "chatcmpl-loopback",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "loopback",
}
_TOKEN = _event(
    {
        **_BASE,
        "choices": [
            {"index": 0, "delta": {"content": " tok"}, "logprobs": None, "finish_reason": None}
        ],
    }
)


def _tail(n: int) -> bytes:
    finish = _event({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    usage = _event(
        {
            **_BASE,
            "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": n, "total_tokens": 100 + n},
        }
    )
    return finish + usage + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Stream:
    __slots__ = ("conn", "left", "n")

    def __init__(self, conn: _Conn, n: int) -> None:
        self.conn = conn
        self.left = n
        self.n = n


class _Conn(asyncio.Protocol):
    def __init__(self, server: LoopbackSSEServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need: int | None = None  # body bytes still expected
        self.head = b""
        self.paused = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                match = re.search(rb"(?im)^content-length:\s*(\d+)", self.head)
                self.need = int(match.group(1)) if match else 0
            if len(self.buf) < self.need:
                return
            body = bytes(self.buf[: self.need])
            del self.buf[: self.need]
            self.need = None
            self._handle(self.head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head.split(b"\r\n", 1)[0]
        parts = line.split()
        path = parts[1] if len(parts) > 1 else b"/"
        self.server.requests += 1
        if path.startswith(b"/v1/chat/completions"):
            match = _MAX_TOKENS.search(body)
            n = int(match.group(1)) if match else 16
            self.transport.write(_HEADERS)
            self.server.add_stream(_Stream(self, n))
            return
        if path.startswith(b"/stats"):
            payload = orjson.dumps(
                {
                    "connections": self.server.connections,
                    "requests": self.server.requests,
                    "cpu_s": time.process_time(),
                }
            )
        elif path.startswith(b"/v1/models"):
            payload = orjson.dumps({"object": "list", "data": [{"id": "loopback"}]})
        else:
            payload = b"{}"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )


class LoopbackSSEServer:
    """The server; use :meth:`start` / :meth:`close` on a running loop.

    Attributes:
        connections: TCP connections accepted so far.
        requests: Requests answered so far.
        url: ``http://127.0.0.1:<port>`` once started.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._streams: deque[_Stream] = deque()
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None

    def add_stream(self, stream: _Stream) -> None:
        """Queue a response stream for the pump."""
        self._streams.append(stream)
        self._wake.set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the URL."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port, backlog=4096)
        sock_port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{host}:{sock_port}"
        self._pump = loop.create_task(self._run())
        return self.url

    async def _run(self) -> None:
        streams = self._streams
        token = _TOKEN
        while True:
            if not streams:
                self._wake.clear()
                await self._wake.wait()
            for _ in range(len(streams)):
                s = streams.popleft()
                transport = s.conn.transport
                if transport is None:
                    continue
                if s.conn.paused:
                    streams.append(s)
                    continue
                if s.left > 0:
                    transport.write(token)
                    s.left -= 1
                    streams.append(s)
                else:
                    transport.write(_tail(s.n))
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop listening and stop the pump."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._server is not None:
            self._server.close()


async def _serve() -> None:
    server = LoopbackSSEServer()
    url = await server.start()
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    await server.close()


def main() -> int:
    """Serve on an ephemeral loopback port until stdin closes (prints the URL first)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
