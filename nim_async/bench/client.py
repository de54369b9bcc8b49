"""The benchmark's request path: one streamed chat completion per call, timed per chunk.

It uses the predictor's stack: the body comes from :mod:`nim_async.protocol.wire` (the one request
builder), the chunks are read by :class:`~nim_async.protocol.stream.StreamAccumulator` (the one
chunk parser) after the bytes SSE decoder, and requests go through
:class:`~nim_async.http.client.ServerClient` over the aiohttp transport. Every request body is
prepared before the clock starts, so image encoding is reported apart from server time, and the
time the response headers arrived is recorded, so upload + acceptance is apart from generation.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from nim_async.bench.metrics import RequestRecord
from nim_async.errors import NIMPredictionError, StreamError
from nim_async.http.client import ServerClient
from nim_async.http.errors import failure_kind
from nim_async.protocol import wire
from nim_async.protocol.sse import SSEDecoder
from nim_async.protocol.stream import BadChunkError, StreamAccumulator
from nim_async.protocol.tasks import get_task

__all__ = ["BenchClient", "PreparedRequest", "build_body"]


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request body ready to send.

    Attributes:
        body: The JSON body.
        encode_s: Seconds it took to encode the image and build the body.
    """

    body: bytes
    encode_s: float


def build_body(
    image: bytes,
    *,
    mime: str,
    model: str,
    task_type: str,
    max_tokens: int,
    prompt: str | None = None,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    wire_format: wire.WireFormat | None = None,
) -> PreparedRequest:
    """Build the OpenAI chat-completions body for one image (timed).

    Args:
        image: Encoded image bytes (JPEG/PNG/WebP).
        mime: Their MIME type.
        model: Served model name.
        task_type: Task whose default prompt and system prompt are used.
        max_tokens: Output token limit.
        prompt: User prompt; the task's default when ``None``.
        ignore_eos: Ask the server to generate exactly ``max_tokens`` (vLLM extension).
        temperature: Sampling temperature.
        wire_format: Where fields go (top level, as vLLM and NIM 2.x read them, by default).

    Returns:
        The body and the seconds spent building it.
    """
    t0 = time.perf_counter()
    task = get_task(task_type)
    data_uri = f"data:{mime};base64," + base64.b64encode(image).decode("ascii")
    body = wire.chat_body(
        model=model,
        messages=wire.image_messages(task.system_prompt, task.build_prompt(prompt), data_uri),
        stream=True,
        wire=wire_format or wire.WireFormat(),
        fields={"max_tokens": max_tokens, "temperature": temperature},
        extensions={"ignore_eos": True} if ignore_eos else None,
    )
    return PreparedRequest(body=wire.dumps(body), encode_s=time.perf_counter() - t0)


class BenchClient:
    """Sends prepared streaming requests and records their timings.

    Args:
        base_url: Server URL (``http://host:port``).
        max_connections: Connection-pool size (the load's concurrency).
        timeout: Per-request read timeout in seconds.
        api_key: Bearer token, when the server wants one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        timeout: float = 600.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = ServerClient(
            self.base_url,
            timeout=timeout,
            connect_timeout=30.0,
            max_connections=max_connections,
            headers=headers,
            pool_timeout=None,
        )
        self.transport = self._client.transport

    def __repr__(self) -> str:
        return f"BenchClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def get_text(self, path: str) -> tuple[int, str]:
        """GET ``path`` and return ``(status, text)``; ``(0, message)`` when unreachable."""
        return await self._client.get_text(path, request_timeout=10.0)

    async def send(self, request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send one request, filling ``record`` (``start`` is set here); never raises.

        A chunk counts as a token arrival when its delta carries ``content`` or reasoning
        (``reasoning_content`` / ``reasoning``), so TTFT includes a reasoning model's thinking.

        Failures are recorded in ``record.error`` by type: ``HTTP <status>`` for an HTTP error,
        the httpx exception name for a transport failure, ``StreamError`` for an error event in
        the stream, ``BadChunk`` for an event that is not JSON and ``IncompleteStream`` when it
        ends without ``[DONE]``.
        """
        perf = time.perf_counter
        times = record.token_times
        record.request_bytes = len(request.body)
        record.encode_s = request.encode_s
        record.start = perf()
        acc = StreamAccumulator()
        try:
            response = await self._client.post(request.body, stream=True)
            record.headers_time = perf()
            decoder = SSEDecoder()
            try:
                while (chunk := await response.next_chunk()) is not None:
                    now = perf()
                    before = acc.arrivals
                    try:
                        acc.feed(decoder.feed(chunk))
                    finally:  # arrivals before an error event in the same read count too
                        if acc.arrivals > before:
                            times.extend([now] * (acc.arrivals - before))
                acc.feed(decoder.close())
            finally:
                await response.aclose()
            if not acc.saw_done:
                record.error = "IncompleteStream"
                record.error_message = "the stream ended without [DONE]"
        except BadChunkError as exc:
            record.error, record.error_message = "BadChunk", str(exc)[:500]
        except StreamError as exc:
            kind = failure_kind(exc)
            record.error = "StreamError" if kind == "StreamError" else kind
            record.error_message = str(exc)[:500]
        except NIMPredictionError as exc:
            record.error = failure_kind(exc)
            message = getattr(exc, "message", None)
            record.error_message = (message if isinstance(message, str) else str(exc))[:500]
        finally:
            usage = acc.usage
            if usage:
                record.output_tokens = usage.get("completion_tokens")
                record.prompt_tokens = usage.get("prompt_tokens")
            record.end = perf()
        return record
