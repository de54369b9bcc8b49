"""The benchmark's request path: one streamed chat completion per call, timed per chunk.

It uses the same stack as the predictor (httpx over
:class:`~nim_async.http.transport.AiohttpTransport`,
the bytes SSE decoder, ``orjson`` on bytes, plain dict access) but prepares every request body
before the clock starts, so image encoding is reported apart from server time, and it records
when the response headers arrived, so upload + acceptance is apart from generation.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from nim_async.bench.metrics import RequestRecord
from nim_async.http.transport import AiohttpTransport
from nim_async.protocol.sse import DONE, SSEDecoder
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

    Returns:
        The body and the seconds spent building it.
    """
    t0 = time.perf_counter()
    task = get_task(task_type)
    messages: list[dict[str, Any]] = []
    if task.system_prompt:
        messages.append({"role": "system", "content": task.system_prompt})
    data_uri = f"data:{mime};base64," + base64.b64encode(image).decode("ascii")
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri}},
                {"type": "text", "text": task.build_prompt(prompt)},
            ],
        }
    )
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        payload["ignore_eos"] = True
    body = orjson.dumps(payload)
    return PreparedRequest(body=body, encode_s=time.perf_counter() - t0)


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
        self.transport = AiohttpTransport(max_connections=max_connections)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            transport=self.transport,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=30.0, pool=None),
        )
        self._url = f"{self.base_url}/v1/chat/completions"

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
        try:
            response = await self._client.get(f"{self.base_url}{path}", timeout=10.0)
        except httpx.HTTPError as exc:
            return 0, str(exc)
        return response.status_code, response.text

    async def send(self, request: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send one request, filling ``record`` (``start`` is set here); never raises.

        A chunk counts as a token arrival when its delta carries ``content`` or reasoning
        (``reasoning_content`` / ``reasoning``), so TTFT includes a reasoning model's thinking.

        Failures are recorded in ``record.error`` by type: ``HTTP <status>`` for an HTTP error,
        the httpx exception name for a transport failure, ``StreamError`` for an error event in
        the stream and ``IncompleteStream`` when it ends without ``[DONE]``.
        """
        perf = time.perf_counter
        times = record.token_times
        record.request_bytes = len(request.body)
        record.encode_s = request.encode_s
        loads = orjson.loads
        record.start = perf()
        try:
            async with self._client.stream("POST", self._url, content=request.body) as response:
                record.headers_time = perf()
                if response.status_code >= 400:
                    await response.aread()
                    record.error = f"HTTP {response.status_code}"
                    record.error_message = response.text[:500]
                    return record
                decoder = SSEDecoder()
                done = False
                async for chunk in response.aiter_raw():
                    now = perf()
                    for event in decoder.feed(chunk):
                        data = event.data
                        if data == DONE:
                            done = True
                            continue
                        obj = loads(data)
                        choices = obj.get("choices")
                        if choices:
                            delta = choices[0].get("delta")
                            # reasoning models stream their thinking first; it is output too
                            if delta and (
                                delta.get("content")
                                or delta.get("reasoning_content")
                                or delta.get("reasoning")
                            ):
                                times.append(now)
                        elif "error" in obj:
                            record.error = "StreamError"
                            record.error_message = str(obj["error"])[:500]
                        usage = obj.get("usage")
                        if usage:
                            record.output_tokens = usage.get("completion_tokens")
                            record.prompt_tokens = usage.get("prompt_tokens")
                if not done and record.error is None:
                    record.error = "IncompleteStream"
                    record.error_message = "the stream ended without [DONE]"
        except httpx.HTTPError as exc:
            record.error = type(exc).__name__
            record.error_message = str(exc)[:500]
        except orjson.JSONDecodeError as exc:
            record.error = "BadChunk"
            record.error_message = str(exc)[:500]
        finally:
            record.end = perf()
        return record
