"""The async predictor: :class:`AsyncNIMPredictor` (prepare -> send -> finish).

One predictor owns one pooled :class:`~nim_async.http.client.ServerClient` and is safe to call
from many tasks at once: a call never mutates the predictor (the only shared state is the
server's wire format, learnt once when ``dialect="auto"``, the default). With several
``endpoints`` (replicas of one model) it owns one client per endpoint in an
:class:`~nim_async.predict.endpoints.EndpointPool`, which chooses, fails over and health-checks.

* **prepare**: the image is loaded/resized/encoded in a worker thread
  (:mod:`nim_async.predict.media`); the body is built by :mod:`nim_async.protocol.wire` with
  each field where the server honours it, serialised once with ``orjson`` and the base64 image
  spliced in as bytes (the same bytes are re-sent on retries).
* **send**: :meth:`ServerClient.post` under the one
  :class:`~nim_async.http.retry.RetryPolicy`: a server that is not answering, or HTTP
  429/502/503/504 before any answer, is retried (``retries + 1`` sends at most).
* **finish**: the text (content, or reasoning + content) is checked against the guided-decoding
  constraint and parsed by the task.

The per-request steps live in :mod:`nim_async.predict.pipeline` (the predictor's base class)
and the IO-free pieces of a call in :mod:`nim_async.predict.prepare`. Streams are
:class:`~nim_async.predict.stream.AsyncPredictionStream` objects over
:class:`~nim_async.protocol.stream.StreamAccumulator`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson

from nim_async.catalog import BoxFormat
from nim_async.config import NIMConfig, NIMSamplingParams
from nim_async.errors import InvalidParameterError, PredictionTimeoutError, ServerError
from nim_async.http.client import (
    MAX_DOWNLOAD_BYTES,
    MAX_RESPONSE_BYTES,
    ServerClient,
    Transport,
)
from nim_async.http.retry import RetryPolicy
from nim_async.predict.endpoints import Balancing, EndpointPool, EndpointStatus
from nim_async.predict.media import DEFAULT_MAX_IMAGE_PIXELS, validate_source
from nim_async.predict.pipeline import PredictorPipeline, StreamExchange
from nim_async.predict.prepare import (
    DEFAULT_PARAMS,
    BodyTemplate,
    PreparedCall,
    check_params,
    check_prompt,
)
from nim_async.predict.stream import AsyncPredictionStream
from nim_async.predict.target import (
    check_limits,
    check_numbers,
    resolve_endpoints,
    resolve_target,
)
from nim_async.predict.video import DEFAULT_MAX_VIDEO_BYTES
from nim_async.protocol import wire
from nim_async.protocol.sse import DEFAULT_MAX_EVENT_BYTES
from nim_async.protocol.stream import parse_completion
from nim_async.protocol.tasks import Task, get_task
from nim_async.protocol.wire import Dialect, WireFormat, wire_format_for
from nim_async.results import NIMDeploymentResult, PredictionResponse, PredictionTimings

if TYPE_CHECKING:
    from nim_async.predict.batch import BatchResult

__all__ = [
    "AsyncNIMPredictor",
    "AsyncPredictionStream",
    "Dialect",
    "WireFormat",
    "wire_format_for",
]

# The names this module defined before the split, still importable from here
# (nim_async.sync.predictor uses _check_params).
_Call = PreparedCall
_Template = BodyTemplate
_Exchange = StreamExchange
_DEFAULT_PARAMS = DEFAULT_PARAMS
_check_prompt = check_prompt
_check_params = check_params


class AsyncNIMPredictor(PredictorPipeline):
    """Run inference against a NIM (or any OpenAI-compatible vision server) asynchronously.

    Example:
        >>> async with AsyncNIMPredictor("cosmos-reason1-7b", "phrase-grounding") as p:
        ...     result = await p(source="image.jpg")
        ...     async with p.stream(source="image.jpg") as s:
        ...         async for token in s:
        ...             print(token, end="")
        ...         result = await s.get_final_response()

    Structured output: the task's own JSON schema is **not** sent as a guided-decoding
    constraint by default. Reasoning models such as cosmos-reason1 write a ``<think>`` block
    before the answer, and a JSON constraint would forbid that block (degrading the answer) on
    servers that do not separate reasoning; the task prompt asks for JSON and the parser finds
    the final JSON object after any reasoning. To constrain anyway, pass
    ``NIMSamplingParams(guided_json=get_task(task_type).output_schema())``: the output is then
    checked against the schema and still parsed by the task. Any other ``guided_*`` constraint
    skips the task parser and returns a :class:`~nim_async.results.TextResponse` holding the
    constrained text. In every case the output is checked against the constraint and
    :class:`~nim_async.errors.GuidedDecodingError` is raised when the server ignored it.

    Where fields go: by default (``dialect="auto"``) the predictor asks the server once what it
    is and sends each field where that server honours it (see :mod:`nim_async.protocol.wire`):
    a JSON schema as ``response_format`` ``json_schema``, choice / regex / grammar as
    ``structured_outputs`` on vLLM >= 0.10.2 and as ``guided_*`` before, NIM extensions under
    ``nvext`` on NIM 1.x only.

    Args:
        model_name: Served model name sent in each request. Taken from ``config`` when omitted.
        task_type: ``"phrase-grounding"``, ``"vqa"``, ``"freeform"``, ``"generic"``,
            ``"video-freeform"`` (any registered task). With ``config`` and no task type, read
            from the custom-weights run metadata; otherwise ``"freeform"`` (vi-sdk's default).
            A video sent to a ``freeform`` or ``generic`` predictor is asked with
            ``video-freeform``, as vi-sdk does.
        port: Port of the NIM on ``host``.
        host: Host of the NIM.
        base_url: Full base URL (``http://host:port``); overrides ``host``/``port``.
        config: A :class:`~nim_async.config.NIMConfig`; model name, host and port come from it.
        system_prompt: System prompt; defaults to the task's (pass ``""`` to send none).
        box_format: Box convention of the model; defaults by model name
            (:func:`~nim_async.catalog.box_format_for_model`), ``norm1024`` for custom weights.
        dialect: Where request fields go (see :data:`~nim_async.protocol.wire.Dialect`):
            ``"auto"`` (learn from the server), ``"openai"``, ``"guided"`` or ``"nvext"``.
        timeout: Seconds for the whole of a non-streamed call (sending, the generation,
            reading the answer, any retries and ``Retry-After`` waits), and for the whole of an
            image-URL download. For a stream: seconds until the answer starts, then the idle
            timeout between server-sent *data* events (SSE comment keep-alives do not reset
            it).
        max_connections: Size of the connection pool (the intended concurrency).
        retries: Retries before streaming starts, for a server that does not answer and for
            HTTP 429, 502, 503 and 504, with jittered exponential backoff and the server's
            ``Retry-After`` honoured (:class:`~nim_async.http.retry.RetryPolicy`): at most
            ``retries + 1`` sends (``0`` disables).
        transport: An ``httpx.AsyncBaseTransport`` to send requests with. By default an
            :class:`nim_async.http.transport.AiohttpTransport` sized to ``max_connections`` (chosen
            by measurement, see ``benchmarks/README.md``); pass
            ``httpx.AsyncHTTPTransport()`` for httpx's own. A transport you pass keeps its own
            pool limits, so size it to ``max_connections`` yourself.
        max_pixels: Pixel budget images are downscaled to before sending (defaults to the
            model's budget from the catalog).
        stream_deadline: Seconds for the whole of a stream, from opening it (image preparation
            included) to its last event (``None``, the default: only the idle ``timeout``
            bounds a stream); past it :class:`~nim_async.errors.PredictionTimeoutError`.
        max_response_bytes: The largest non-streamed answer body read
            (:class:`~nim_async.errors.ResponseTooLargeError` past it).
        max_event_bytes: The largest single server-sent event of a stream
            (:class:`~nim_async.errors.ResponseTooLargeError` past it).
        max_download_bytes: The largest image or video download (``MediaError`` past it).
        max_image_pixels: The largest image decoded, in pixels after JPEG reduce-on-load
            (``MediaError`` past it, checked from the header before decoding; far below
            Pillow's own bomb limit).
        max_video_bytes: The largest video file sent (``MediaError`` past it, checked before
            the file is read).
        endpoints: Several servers of the same model to spread requests over: base URLs, or a
            :class:`~nim_async.results.NIMDeploymentResult` (its ``endpoints``; its served
            model name when ``model_name`` is omitted). Also filled from
            ``config=NIMConfig(replicas=N)``: ports ``port .. port+N-1`` on its host. Each
            request goes to the endpoint with the fewest outstanding requests; an endpoint that
            refuses connections, drops a stream or answers 502/503/504 is marked down and
            health-checked in the background until ready; a request that had not started
            streaming moves to another endpoint under the same retry policy (``retries + 1``
            sends in all); every endpoint down raises
            :class:`~nim_async.errors.EndpointsUnavailableError` naming each and why (see
            :mod:`nim_async.predict.endpoints`). One endpoint behaves exactly like ``base_url``.
            Not together with ``base_url``, nor with ``transport`` (each endpoint gets its own
            default transport).
        balancing: How several endpoints are chosen and health-checked
            (:class:`~nim_async.predict.endpoints.Balancing`; e.g. ``queue_weight`` to weigh
            each server's own ``vllm:num_requests_waiting``, off by default).

    Raises:
        ValueError: for an unknown task type, a missing model name, or invalid numbers.
        InvalidParameterError: (a ``ValueError``) ``base_url`` and ``endpoints`` together, or
            an endpoint that is not an ``http(s)://`` URL or is given twice.
    """

    def __init__(
        self,
        model_name: str | None = None,
        task_type: str | None = None,
        port: int = 8000,
        *,
        host: str = "127.0.0.1",
        base_url: str | None = None,
        config: NIMConfig | None = None,
        system_prompt: str | None = None,
        box_format: BoxFormat | None = None,
        dialect: Dialect = "auto",
        timeout: float = 300.0,
        max_connections: int = 256,
        retries: int = 3,
        transport: Transport | None = None,
        max_pixels: int | None = None,
        stream_deadline: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
        endpoints: Sequence[str] | NIMDeploymentResult | None = None,
        balancing: Balancing | None = None,
    ) -> None:
        urls, served_name = resolve_endpoints(endpoints, base_url, config)
        if len(urls) > 1 and transport is not None:
            raise InvalidParameterError(
                "transport= applies to one server; with several endpoints each gets its own "
                "default transport (leave transport unset)",
                field="transport",
            )
        target = resolve_target(
            model_name or served_name,
            task_type,
            port,
            host,
            urls[0] if urls else base_url,
            config,
            system_prompt,
            box_format,
        )
        check_numbers(dialect, timeout, max_connections, retries, max_pixels)
        check_limits(
            stream_deadline=stream_deadline,
            max_response_bytes=max_response_bytes,
            max_event_bytes=max_event_bytes,
            max_download_bytes=max_download_bytes,
            max_image_pixels=max_image_pixels,
            max_video_bytes=max_video_bytes,
        )
        self._max_video_bytes = max_video_bytes
        self._stream_deadline = stream_deadline
        self._max_response_bytes = max_response_bytes
        self._max_event_bytes = max_event_bytes
        self._max_download_bytes = max_download_bytes
        self._max_image_pixels = max_image_pixels
        self._task: Task = get_task(target.task_type)
        self.model_name: str = target.model_name
        self.task_type: str = self._task.name
        self._base_url = target.base_url
        self._spec = target.spec
        self._box_format: BoxFormat = target.box_format
        self._system_prompt = (
            self._task.system_prompt if target.system_prompt is None else target.system_prompt
        )
        self._max_pixels = max_pixels or self._spec.max_pixels
        self._dialect: Dialect = dialect
        self._wire: WireFormat | None = wire.wire_format_for_dialect(dialect)
        self._wire_lock = asyncio.Lock()
        self._retry = RetryPolicy.from_retries(retries)
        self._timeout = timeout
        self._placeholder = f"nim-async-image-{uuid.uuid4().hex}"
        self._placeholder_json = orjson.dumps(self._placeholder)
        self._bodies = {}
        self._open_clients(urls, transport, balancing, max_connections)

    def _open_clients(
        self,
        urls: tuple[str, ...],
        transport: Transport | None,
        balancing: Balancing | None,
        max_connections: int,
    ) -> None:
        """Set up the HTTP side: an endpoint pool for several servers, else one client."""
        self._max_connections = max_connections
        self._own_transport = transport is None
        self._endpoints: tuple[str, ...] = urls if len(urls) > 1 else (self._base_url,)
        self._where = self._base_url if len(urls) < 2 else f"endpoints {', '.join(urls)}"
        self._loop = None
        self._closed = False
        if len(urls) > 1:
            # One client per endpoint; the first is also the one for downloads and lookups.
            self._pool = EndpointPool(
                urls, self._endpoint_client, retry=self._retry, balancing=balancing
            )
            self._http = self._pool.clients[0]
            return
        self._pool = None
        # Default transport chosen by measurement (benchmarks/README.md): httpx's own pool
        # collapses under many concurrent streams; aiohttp's keeps near raw-aiohttp speed.
        self._http = ServerClient(
            self._base_url,
            timeout=self._timeout,
            max_connections=max_connections,
            transport=transport,
        )

    def _endpoint_client(self, url: str) -> ServerClient:
        return ServerClient(url, timeout=self._timeout, max_connections=self._max_connections)

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """The server's base URL (``http://host:port``; the first one with several endpoints)."""
        return self._base_url

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint's base URL (``(base_url,)`` for one server)."""
        return self._endpoints

    def endpoint_status(self) -> list[EndpointStatus]:
        """A snapshot of each endpoint: up or down (and why), requests outstanding, sent, served.

        Kept only with several endpoints; for one server, a single entry that is always up
        with zero counts (the one-server path keeps no books).
        """
        if self._pool is not None:
            return self._pool.status()
        return [EndpointStatus(self._base_url, True, None, 0, 0.0, 0, 0, 0)]

    @property
    def box_format(self) -> BoxFormat:
        """The box convention used to convert boxes to pixels."""
        return self._box_format

    @property
    def system_prompt(self) -> str | None:
        """The system prompt sent with each request (``None`` or ``""`` for none)."""
        return self._system_prompt

    @property
    def max_pixels(self) -> int:
        """The pixel budget images are downscaled to before sending."""
        return self._max_pixels

    @property
    def task(self) -> Task:
        """The task object (prompt, schema, parser)."""
        return self._task

    @property
    def dialect(self) -> Dialect:
        """The dialect asked for (``"auto"``: learnt from the server, see :meth:`wire_format`)."""
        return self._dialect

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy applied to each send (``attempts == retries + 1``)."""
        return self._retry

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def __repr__(self) -> str:
        where = (
            f"base_url={self._base_url!r}"
            if self._pool is None
            else f"endpoints={list(self._pool.urls)!r}"
        )
        return (
            f"AsyncNIMPredictor(model_name={self.model_name!r}, task_type={self.task_type!r}, "
            f"{where}, box_format={self._box_format!r})"
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pool = self._pool
        if self._loop is not None and self._loop.is_closed():
            if pool is not None:
                pool.abandon()
            else:
                self._http.abandon()
            return
        if pool is not None:
            await pool.aclose()
        else:
            await self._http.aclose()

    # ------------------------------------------------------------------ public calls

    async def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        sampling_params: NIMSamplingParams | None = None,
    ) -> PredictionResponse:
        """Run inference on one image or video and return the parsed response.

        Args:
            source: Path, ``http(s)`` URL, bytes, or PIL image; a video as a path or URL
                ending ``.mp4`` / ``.webm`` (``.mov``, ``.mkv``, ...), MP4 or WebM bytes, or a
                ``data:video/...`` URI (sent as a ``video_url`` part).
            user_prompt: The prompt; the task's default prompt when ``None``.
            sampling_params: Sampling configuration; documented defaults when ``None``.

        Returns:
            The task's response (``PhraseGroundingResponse``, ``VQAResponse``,
            ``FreeformResponse``, ``GenericResponse``), or a ``TextResponse`` when a custom
            guided-decoding constraint was set.

        Raises:
            MediaError: the image cannot be loaded; the video is not MP4 / WebM, is over
                ``max_video_bytes``, or was given to a task that takes none
                (``phrase-grounding``); an image given to ``video-freeform``.
            ServiceUnavailableError: no server answers at :attr:`base_url`.
            ServerError: the server answered with an HTTP error (typed subclasses).
            PredictionTimeoutError: the request timed out.
            PredictionParseError: the output cannot be parsed into the task's result.
            GuidedDecodingError: the output violates the requested constraint.
        """
        call = await self._prepare(source, user_prompt, sampling_params, stream=False)
        started = time.perf_counter()
        timeout = self._timeout
        pool = self._pool
        try:
            async with asyncio.timeout(timeout):
                if pool is None:
                    response = await self._send(call.body, stream=False, deadline=timeout)
                    body = await response.read(self._max_response_bytes)
                    status = response.status_code
                else:  # a body that broke is sent again whole, elsewhere: nothing was handed out
                    status, body = await pool.complete(
                        call.body, deadline=timeout, max_bytes=self._max_response_bytes
                    )
        except TimeoutError as exc:
            raise PredictionTimeoutError(
                f"the request to {self._where} did not finish within timeout={timeout:g} s "
                "(a deadline for the whole call: sending, generation, reading, retries)"
            ) from exc
        total = time.perf_counter() - started
        try:
            result = parse_completion(body)
        except ValueError as exc:
            raise ServerError(status, str(exc)) from exc
        timings = PredictionTimings(encode=call.image.encode_seconds, total=total)
        return self._finish(call, result, timings)

    def stream(
        self,
        source: object,
        user_prompt: str | None = None,
        sampling_params: NIMSamplingParams | None = None,
    ) -> AsyncPredictionStream:
        """Start a streamed prediction.

        The request is sent when the stream is entered (``async with``) or first iterated.
        Use it as an async context manager so the HTTP response is closed on exit, ``break``
        or error.

        Args:
            source: Path, ``http(s)`` URL, bytes, or PIL image; or a video (as in
                :meth:`__call__`).
            user_prompt: The prompt; the task's default prompt when ``None``.
            sampling_params: Sampling configuration; documented defaults when ``None``.

        Returns:
            The stream: iterate it for content tokens, then ``await get_final_response()``.

        Raises:
            MediaError: for an unsupported source type or a missing file (checked at once).
            TypeError: when ``sampling_params`` is not a ``NIMSamplingParams``.
        """
        check_params(sampling_params)
        check_prompt(user_prompt)
        validate_source(source)

        return AsyncPredictionStream(
            StreamExchange(self, source, user_prompt, sampling_params),
            idle_timeout=self._timeout,
            deadline=self._stream_deadline,
            max_event_bytes=self._max_event_bytes,
        )

    def predict_many(self, sources: Iterable[Any], **kwargs: Any) -> AsyncIterator[BatchResult]:
        """Score many inputs with bounded concurrency.

        See :func:`nim_async.predict.batch.predict_many`.

        Args:
            sources: The inputs (any source :meth:`__call__` accepts), sync or async iterable.
            **kwargs: ``concurrency``, ``user_prompt``, ``sampling_params``, ``ordered``,
                ``retries``, ``progress`` (passed through).

        Returns:
            An async iterator of one ``BatchResult`` per input (a result or an error).
        """
        from nim_async.predict.batch import predict_many

        return predict_many(self, sources, **kwargs)

    async def health_ready(self) -> bool:
        """Whether the server is ready: NIM's ``/v1/health/ready`` or vLLM's ``/health`` is 200.

        With several endpoints: whether any of them is (each is asked).
        """
        client = self._client()
        if self._pool is not None:
            return await self._pool.any_ready(request_timeout=min(self._timeout, 10.0))
        return await client.health_ready(request_timeout=min(self._timeout, 10.0))

    async def list_models(self) -> list[str]:
        """Return the model ids the server serves (``/v1/models``).

        Raises:
            ServiceUnavailableError: no server answers.
            ServerError: the server answered with an HTTP error.
        """
        client = self._client()
        if self._pool is not None:
            cards = await self._pool.first(lambda c: c.models(), label="GET /v1/models")
        else:
            cards = await client.models()
        return [str(card["id"]) for card in cards]
