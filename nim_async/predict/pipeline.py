"""The per-request half of the predictor: bind the loop's client, prepare, send, finish.

:class:`PredictorPipeline` holds the methods every call runs, in order: :meth:`_client
<PredictorPipeline._client>` (the HTTP client of the running event loop), :meth:`wire_format
<PredictorPipeline.wire_format>` (where the server takes each field, learnt once),
:meth:`_prepare <PredictorPipeline._prepare>` (the media loaded in a worker thread, the body
spliced from a cached template), :meth:`_send <PredictorPipeline._send>` (under the one retry
policy, or through the endpoint pool) and :meth:`_finish <PredictorPipeline._finish>` (the
guided-decoding check and the task's parse). :class:`~nim_async.predict.predictor.AsyncNIMPredictor`
is the pipeline with its public surface: the constructor, the properties and the calls.

The predictor inherits these methods rather than delegating to a helper object so that a request
costs exactly what it did when they were written in one class: no extra call or attribute hop per
request. The attributes they read are set by ``AsyncNIMPredictor.__init__`` and declared here.
:class:`StreamExchange` is a sent streaming request as
:class:`~nim_async.predict.stream.AsyncPredictionStream` consumes it.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from nim_async.catalog import BoxFormat, ImageSpec
from nim_async.config import NIMSamplingParams
from nim_async.errors import (
    GuidedDecodingError,
    MediaError,
    NIMPredictionError,
    PredictionParseError,
    PredictionTimeoutError,
)
from nim_async.http.client import ChatResponse, ServerClient
from nim_async.http.retry import RetryPolicy
from nim_async.predict.endpoints import EndpointPool
from nim_async.predict.media import load_media
from nim_async.predict.prepare import (
    DEFAULT_PARAMS,
    BodyTemplate,
    PreparedCall,
    build_body_template,
    check_params,
    check_prompt,
)
from nim_async.predict.video import EncodedVideo
from nim_async.protocol.geometry import smart_resize
from nim_async.protocol.guided import check_guided_output
from nim_async.protocol.stream import StreamResult, usage_from
from nim_async.protocol.tasks import ParseContext, Task, task_for_media
from nim_async.protocol.tasks.parsing import split_thinking
from nim_async.protocol.wire import WireFormat, wire_format_for
from nim_async.results import PredictionResponse, PredictionTimings, TextResponse

__all__ = ["PredictorPipeline", "StreamExchange"]


class PredictorPipeline:
    """Prepare -> send -> finish for one request (the base of ``AsyncNIMPredictor``).

    Not made on its own: ``AsyncNIMPredictor.__init__`` sets every attribute declared below.

    Attributes:
        model_name: Served model name sent in each request (read at each call).
    """

    model_name: str
    _task: Task
    _spec: ImageSpec
    _box_format: BoxFormat
    _system_prompt: str | None
    _max_pixels: int
    _max_download_bytes: int
    _max_image_pixels: int
    _max_video_bytes: int
    _timeout: float
    _max_connections: int
    _retry: RetryPolicy
    _wire: WireFormat | None
    _wire_lock: asyncio.Lock
    _wire_asked: asyncio.Future[None] | None = None  # done when the ask under the lock ends
    _placeholder: str
    _placeholder_json: bytes
    _bodies: dict[tuple[int, str, bool, str, str, str], BodyTemplate]
    _base_url: str
    _where: str
    _own_transport: bool
    _pool: EndpointPool | None
    _http: ServerClient
    _loop: asyncio.AbstractEventLoop | None
    _closed: bool

    def _client(self) -> ServerClient:
        """The HTTP client for the running event loop (a new one after a closed loop)."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return self._http
        if self._loop is None:
            self._loop = loop
            return self._http
        if not self._loop.is_closed():
            raise RuntimeError(
                "this AsyncNIMPredictor is in use on another event loop that is still running; "
                "create one predictor per event loop (or use the blocking NIMPredictor from "
                "threads)"
            )
        if not self._own_transport:
            raise RuntimeError(
                "this AsyncNIMPredictor was used in an earlier asyncio.run() whose loop is "
                "closed, and the transport you passed belongs to that loop; create the "
                "predictor (and its transport) inside the coroutine that asyncio.run() runs"
            )
        # The earlier loop is gone (a second asyncio.run()): its connections cannot be closed
        # from here; drop them quietly and start a fresh pool on this loop.
        if self._pool is not None:
            self._http = self._pool.rebind()
        else:
            self._http.abandon()
            self._http = ServerClient(
                self._base_url, timeout=self._timeout, max_connections=self._max_connections
            )
        self._wire_lock = asyncio.Lock()
        self._wire_asked = None
        self._loop = loop
        return self._http

    async def wire_format(self) -> WireFormat:
        """Return where fields are sent to this server (asked once for ``dialect="auto"``).

        Raises:
            ServiceUnavailableError: no server answers (nothing is remembered; asked again).
        """
        if self._wire is not None:
            return self._wire
        asked = self._wire_asked
        if asked is not None:
            # Another call is asking: wait for its answer together with every other waiter
            # (all woken at once), not one after the other through the lock, which hands
            # itself on one waiter per loop iteration (seconds for 256 first streams). If it
            # failed, each waiter asks in turn under the lock, as before.
            await asyncio.wait((asked,))
            if self._wire is not None:
                return self._wire
        async with self._wire_lock:
            if self._wire is None:
                asked = self._wire_asked = asyncio.get_running_loop().create_future()
                try:
                    return await self._ask_wire_format()
                finally:
                    self._wire_asked = None
                    if not asked.done():
                        asked.set_result(None)
            return self._wire

    async def _ask_wire_format(self) -> WireFormat:
        # Under the same retry policy as a send: a restarting server is retried here too.
        client = self._client()
        wait = min(self._timeout, 10.0)
        if self._pool is not None:  # the endpoints serve one model: ask one that answers
            info = await self._pool.first(
                lambda c: c.server_info(request_timeout=wait), label="GET server version"
            )
        else:
            info = await self._retry.run(
                lambda: client.server_info(request_timeout=wait),
                label="GET server version",
            )
        self._wire = wire = wire_format_for(
            info.nim_version, info.metadata, vllm=info.vllm_version, owned_by=info.owned_by
        )
        return wire

    # ------------------------------------------------------------------ prepare

    async def _prepare(
        self,
        source: object,
        user_prompt: str | None,
        sampling_params: NIMSamplingParams | None,
        *,
        stream: bool,
    ) -> PreparedCall:
        if self._closed:
            raise RuntimeError("this predictor is closed; create a new one")
        params = check_params(sampling_params) or DEFAULT_PARAMS
        check_prompt(user_prompt)
        client = self._client()
        wire_format = await self.wire_format()
        image = await load_media(
            source,
            max_pixels=self._max_pixels,
            fetch=partial(client.fetch, max_bytes=self._max_download_bytes, deadline=self._timeout),
            max_image_pixels=self._max_image_pixels,
            max_video_bytes=self._max_video_bytes,
        )
        try:
            task = task_for_media(self._task, image.kind)
        except ValueError as exc:
            raise MediaError(f"{exc} (source: {image.source})", source=image.source) from None
        prompt = task.build_prompt(user_prompt)
        # The body around the media depends only on (params, prompt, stream, model, task, media
        # kind, wire): built and serialised once, then reused (params are frozen; the entry
        # holds a weak reference to check the id still names the same object).
        key = (id(params), prompt, stream, self.model_name, task.name, image.kind)
        hit = self._bodies.get(key)
        if hit is None or hit[0]() is not params or hit[1] is not wire_format:
            hit = build_body_template(
                params,
                prompt,
                stream,
                wire_format,
                task,
                image.kind,
                model=self.model_name,
                system_prompt=self._system_prompt,
                default_task=self._task,
                placeholder=self._placeholder,
                placeholder_json=self._placeholder_json,
            )
            if len(self._bodies) >= 256:
                self._bodies.clear()
            self._bodies[key] = hit
        _, _, head, tail, constraint, custom = hit
        data = b"".join((head, b'"', image.data_uri, b'"', tail))
        model_input: tuple[int, int] | None = None
        if isinstance(image, EncodedVideo):
            pass  # no boxes to convert: the frame size is the server's to read
        elif self._box_format == "qwen25-abs":
            try:
                model_input = smart_resize(
                    *image.sent_size,
                    factor=self._spec.patch_size,
                    min_pixels=self._spec.min_pixels,
                    max_pixels=self._spec.max_pixels,
                )
            except ValueError as exc:  # an aspect ratio over 200: the server refuses it too
                raise MediaError(
                    f"cannot send the image {image.source}: {exc}", source=image.source
                ) from exc
        else:
            model_input = image.sent_size
        # Preparing (checks, base64, the body) and sending (httpx's and aiohttp's objects, the
        # write) each take about half a millisecond of CPU. In one loop step they would hold
        # the event loop for both, and every other stream's chunks and timers would wait.
        await asyncio.sleep(0)
        return PreparedCall(
            data, prompt, image, model_input, params, constraint, custom, wire_format, task
        )

    # ------------------------------------------------------------------ send

    async def _send(self, body: bytes, *, stream: bool, deadline: float) -> ChatResponse:
        # The one retry policy: no server answering, HTTP 429/502/503/504 (Retry-After
        # honoured); the same body bytes are re-sent. Nothing is retried once streaming began.
        # The caller's deadline bounds the retries: a Retry-After that would end past it
        # fails at once (the error carries the server's Retry-After).
        if self._pool is not None:  # several endpoints: chosen, failed over, counted there
            return await self._pool.send(body, stream=stream, deadline=deadline)
        client = self._client()
        retry = self._retry.start(deadline=deadline, label="POST /v1/chat/completions")
        while True:
            try:
                return await client.post(body, stream=stream)
            except NIMPredictionError as exc:
                if not await retry.backoff(exc):
                    raise

    # ------------------------------------------------------------------ finish

    def _finish(
        self, call: PreparedCall, result: StreamResult, timings: PredictionTimings
    ) -> PredictionResponse:
        content, reasoning = result.content, result.reasoning
        text = content
        if reasoning and "<think>" not in content:
            text = f"<think>{reasoning}</think>\n{content}"
        finish_reason = result.finish_reason
        model = result.model or self.model_name
        usage = usage_from(result.usage)
        if call.constraint is not None:
            try:
                check_guided_output(text, call.params, finish_reason=finish_reason)
            except GuidedDecodingError as exc:
                raise GuidedDecodingError(
                    f"{exc} {call.wire.advice(call.constraint)}",
                    raw_output=exc.raw_output,
                    constraint=exc.constraint,
                ) from None
            except PredictionParseError as exc:  # cut off: too few tokens, or an ignored field
                raise PredictionParseError(
                    f"{exc}. Raise max_tokens if the answer needs more; if it does not, the "
                    f"server may have ignored the constraint. {call.wire.advice(call.constraint)}",
                    raw_output=exc.raw_output,
                ) from None
        if call.custom:
            thinking, answer = split_thinking(text)
            return TextResponse(
                task_type=call.task.name,
                model=model,
                prompt=call.prompt,
                raw_output=text,
                thinking=thinking,
                usage=usage,
                finish_reason=finish_reason,
                image_size=call.image.original_size,
                timings=timings,
                text=answer,
            )
        context = ParseContext(
            prompt=call.prompt,
            model=model,
            box_format=self._box_format,
            original_size=call.image.original_size,
            model_input_size=call.model_input_size,
            usage=usage,
            finish_reason=finish_reason,
        )
        parsed = call.task.parse(text, context)
        return parsed.model_copy(update={"timings": timings})


class StreamExchange:
    """A streaming request: sent when called (by the stream), then consumed by the stream.

    One object per stream serves as the stream's ``open_`` function and as the
    :class:`~nim_async.predict.stream.Exchange` it returns (itself), instead of a closure over
    the call's arguments and a second object: fewer objects live for every request in flight.
    """

    __slots__ = (
        "_call",
        "_params",
        "_predictor",
        "_prompt",
        "_source",
        "encode_seconds",
        "response",
        "sent_at",
    )

    response: ChatResponse
    _call: PreparedCall

    def __init__(
        self,
        predictor: PredictorPipeline,
        source: object,
        user_prompt: str | None,
        sampling_params: NIMSamplingParams | None,
    ) -> None:
        self._predictor = predictor
        self._source = source
        self._prompt = user_prompt
        self._params = sampling_params
        self.encode_seconds = 0.0
        self.sent_at = 0.0

    async def __call__(self) -> StreamExchange:
        """Prepare and send the request; return this exchange with its response.

        Raises:
            PredictionTimeoutError: the answer did not start within the predictor's timeout.
        """
        predictor = self._predictor
        call = self._call = await predictor._prepare(
            self._source, self._prompt, self._params, stream=True
        )
        self._source = None  # the prepared body holds what is sent; the source is not needed
        self.encode_seconds = call.image.encode_seconds
        timeout = predictor._timeout
        self.sent_at = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                self.response = await predictor._send(call.body, stream=True, deadline=timeout)
        except TimeoutError as exc:
            raise PredictionTimeoutError(
                f"the stream from {predictor._where} did not start within timeout={timeout:g} s"
            ) from exc
        return self

    def finish(self, result: StreamResult, timings: PredictionTimings) -> PredictionResponse:
        """Check and parse the accumulated stream."""
        return self._predictor._finish(self._call, result, timings)
