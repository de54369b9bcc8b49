"""The async predictor: :class:`AsyncNIMPredictor` and :class:`AsyncPredictionStream`.

This is the HTTP layer of inference. One predictor owns one pooled ``httpx.AsyncClient`` and
is safe to call from many tasks at once: a call never mutates the predictor (the only shared
state is the server dialect, discovered once when ``dialect="auto"``).

Hot path, per request: the image is loaded/resized/encoded in a worker thread
(:mod:`nim_async.predict.media`); the JSON body is built once with ``orjson`` with the base64 image
spliced in as bytes, and the same bytes are re-sent on retries; the streamed body is framed
by :class:`nim_async.protocol.sse.SSEDecoder` on bytes, each event goes to ``orjson.loads``
and is read with plain dict access (no model object per chunk); after ``[DONE]`` the body is
read to its end so the connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import httpx
import orjson

from nim_async.catalog import KNOWN_IMAGES, BoxFormat, ImageSpec, box_format_for_model
from nim_async.config import NIMConfig, NIMSamplingParams
from nim_async.errors import (
    BadRequestError,
    MediaError,
    ModelNotFoundError,
    NIMPredictionError,
    PredictionTimeoutError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
)
from nim_async.http.transport import AiohttpTransport
from nim_async.predict.media import EncodedImage, load_image, validate_source
from nim_async.protocol.geometry import smart_resize
from nim_async.protocol.guided import check_guided_output
from nim_async.protocol.sse import DONE, SSEDecoder, SSEEvent
from nim_async.protocol.tasks import ParseContext, Task, get_task
from nim_async.protocol.tasks.parsing import split_thinking
from nim_async.results import PredictionResponse, PredictionTimings, TextResponse, Usage

if TYPE_CHECKING:
    from nim_async.predict.batch import BatchResult

__all__ = [
    "AsyncNIMPredictor",
    "AsyncPredictionStream",
    "Dialect",
    "WireFormat",
]

Dialect = Literal["openai", "nvext", "auto"]
"""How sampling fields are sent.

* ``openai``: every field top-level, guided decoding as ``guided_*`` (NIM 2.x, vLLM < 0.12).
* ``nvext``: OpenAI fields top-level, NIM extensions (``top_k``, ``min_p``,
  ``repetition_penalty``, ``min_tokens``, ``ignore_eos``, ``guided_*`` ...) under ``"nvext"``
  (NIM 1.x).
* ``auto``: ask the server once (``/v1/version``, ``/v1/metadata``) and pick one of the
  above, or ``structured_outputs`` for guided decoding on vLLM >= 0.12.
"""

_CHAT_PATH = "/v1/chat/completions"
_OPENAI_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")
_EXTENSION_FIELDS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos")
_GUIDED_TO_STRUCTURED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
_RETRY_STATUSES = frozenset({429, 503})
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 8.0
_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
_DEFAULT_PARAMS = NIMSamplingParams()


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that stores nothing: skips httpx's per-response cookie parsing (~15 µs)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Ignore the response's cookies."""

    def add_cookie_header(self, request: Any) -> None:
        """Add no cookie header."""


class WireFormat:
    """Where request fields go for one server (resolved from the :data:`Dialect`).

    Attributes:
        extensions_in_nvext: Send the NIM/vLLM extensions under ``"nvext"``.
        guided: ``"guided"`` (``guided_*`` fields) or ``"structured_outputs"``.
    """

    __slots__ = ("extensions_in_nvext", "guided")

    def __init__(
        self,
        *,
        extensions_in_nvext: bool = False,
        guided: Literal["guided", "structured_outputs"] = "guided",
    ) -> None:
        self.extensions_in_nvext = extensions_in_nvext
        self.guided = guided

    def __repr__(self) -> str:
        return f"WireFormat(extensions_in_nvext={self.extensions_in_nvext}, guided={self.guided!r})"


_OPENAI_WIRE = WireFormat()
_NVEXT_WIRE = WireFormat(extensions_in_nvext=True)


class _Call:
    """One prepared request (immutable after construction; never shared between calls)."""

    __slots__ = ("body", "constraint", "image", "model_input_size", "params", "prompt")

    def __init__(
        self,
        body: bytes,
        prompt: str,
        image: EncodedImage,
        model_input_size: tuple[int, int],
        params: NIMSamplingParams,
        constraint: Literal["none", "task", "custom"],
    ) -> None:
        self.body = body
        self.prompt = prompt
        self.image = image
        self.model_input_size = model_input_size
        self.params = params
        self.constraint = constraint


class AsyncNIMPredictor:
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

    Args:
        model_name: Served model name sent in each request. Taken from ``config`` when omitted.
        task_type: ``"phrase-grounding"`` or ``"vqa"`` (any registered task). With ``config``
            and no task type, read from the custom-weights run metadata.
        port: Port of the NIM on ``host``.
        host: Host of the NIM.
        base_url: Full base URL (``http://host:port``); overrides ``host``/``port``.
        config: A :class:`~nim_async.config.NIMConfig`; model name, host and port come from it.
        system_prompt: System prompt; defaults to the task's (pass ``""`` to send none).
        box_format: Box convention of the model; defaults by model name
            (:func:`~nim_async.catalog.box_format_for_model`), ``norm1024`` for custom weights.
        dialect: Where sampling fields go (see :data:`Dialect`).
        timeout: Seconds to wait for a connection and between bytes of the answer (for a
            non-streamed call, the whole generation).
        max_connections: Size of the connection pool (the intended concurrency).
        retries: Retries for connect errors, HTTP 429 and HTTP 503 before streaming starts,
            with jittered exponential backoff (``0`` disables).
        transport: An ``httpx.AsyncBaseTransport`` to send requests with. By default an
            :class:`nim_async.http.transport.AiohttpTransport` sized to ``max_connections`` (chosen
            by measurement, see ``benchmarks/README.md``); pass
            ``httpx.AsyncHTTPTransport()`` for httpx's own. A transport you pass keeps its own
            pool limits, so size it to ``max_connections`` yourself.
        max_pixels: Pixel budget images are downscaled to before sending (defaults to the
            model's budget from the catalog).

    Raises:
        ValueError: for an unknown task type, a missing model name or task type, or invalid
            numbers.
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
        dialect: Dialect = "openai",
        timeout: float = 300.0,
        max_connections: int = 256,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        max_pixels: int | None = None,
    ) -> None:
        spec: ImageSpec | None = None
        custom_weights = False
        if config is not None:
            model_name = model_name or config.served_model_name or config.image_name
            base_url = base_url or config.base_url
            spec = KNOWN_IMAGES.get(config.image_name)
            custom_weights = config.run_id is not None or config.model_path is not None
            if task_type is None or system_prompt is None:
                metadata = _load_run_metadata(config)
                if metadata is not None:
                    task_type = task_type or metadata.task_type
                    if system_prompt is None:
                        system_prompt = metadata.system_prompt
        if not model_name:
            raise ValueError("model_name is required (or pass config=NIMConfig(...))")
        if not task_type:
            raise ValueError(
                "task_type is required: 'phrase-grounding' or 'vqa' (custom-weights runs "
                "without stored run metadata need it too)"
            )
        if dialect not in ("openai", "nvext", "auto"):
            raise ValueError(f"dialect must be 'openai', 'nvext' or 'auto', got {dialect!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if max_pixels is not None and max_pixels < 28 * 28:
            raise ValueError(f"max_pixels must be at least {28 * 28}, got {max_pixels}")
        if box_format is not None and box_format not in ("norm1024", "qwen25-abs", "norm1000"):
            raise ValueError(f"unknown box_format {box_format!r}")

        self._task: Task = get_task(task_type)
        self.model_name: str = model_name
        self.task_type: str = self._task.name
        if base_url is None:
            if not 1 <= port <= 65535:
                raise ValueError(f"port must be between 1 and 65535, got {port}")
            shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
            base_url = f"http://{shown}:{port}"
        self._base_url = base_url.rstrip("/")
        self._chat_url = httpx.URL(self._base_url + _CHAT_PATH)
        self._spec = (
            spec or KNOWN_IMAGES.get(model_name) or ImageSpec(model_name, (), (), "norm1024")
        )
        if box_format is None:
            box_format = "norm1024" if custom_weights else box_format_for_model(model_name)
        self._box_format: BoxFormat = box_format
        self._system_prompt = self._task.system_prompt if system_prompt is None else system_prompt
        self._max_pixels = max_pixels or self._spec.max_pixels
        self._dialect: Dialect = dialect
        self._wire: WireFormat | None = {"openai": _OPENAI_WIRE, "nvext": _NVEXT_WIRE}.get(dialect)
        self._wire_lock = asyncio.Lock()
        self._retries = retries
        self._timeout = timeout
        self._placeholder = f"nim-async-image-{uuid.uuid4().hex}"
        self._placeholder_json = orjson.dumps(self._placeholder)
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            # Default transport chosen by measurement (benchmarks/README.md): httpx's own pool
            # collapses under many concurrent streams; aiohttp's keeps near raw-aiohttp speed.
            transport=(
                transport
                if transport is not None
                else AiohttpTransport(max_connections=max_connections, keepalive_expiry=30.0)
            ),
            headers={"User-Agent": "nim-async"},
            # A NIM sets no cookies; httpx would still parse every response for them.
            cookies=_NoCookies(),
        )
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """The server's base URL (``http://host:port``)."""
        return self._base_url

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
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"AsyncNIMPredictor(model_name={self.model_name!r}, task_type={self.task_type!r}, "
            f"base_url={self._base_url!r}, box_format={self._box_format!r})"
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
        await self._client.aclose()

    # ------------------------------------------------------------------ public calls

    async def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        sampling_params: NIMSamplingParams | None = None,
    ) -> PredictionResponse:
        """Run inference on one image and return the parsed response.

        Args:
            source: Path, ``http(s)`` URL, bytes, or PIL image.
            user_prompt: The prompt; the task's default prompt when ``None``.
            sampling_params: Sampling configuration; documented defaults when ``None``.

        Returns:
            The task's response (``PhraseGroundingResponse``, ``VQAResponse``), or a
            ``TextResponse`` when a custom guided-decoding constraint was set.

        Raises:
            MediaError: the image cannot be loaded.
            ServiceUnavailableError: no server answers at :attr:`base_url`.
            ServerError: the server answered with an HTTP error (typed subclasses).
            PredictionTimeoutError: the request timed out.
            PredictionParseError: the output cannot be parsed into the task's result.
            GuidedDecodingError: the output violates the requested constraint.
        """
        call = await self._prepare(source, user_prompt, sampling_params, stream=False)
        started = time.perf_counter()
        response = await self._send(call.body, stream=False)
        try:
            body = await response.aread()
        except httpx.TimeoutException as exc:
            raise PredictionTimeoutError(
                f"the NIM at {self._base_url} did not finish within {self._timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise StreamError(
                f"the connection to {self._base_url} broke while reading the answer: {exc}"
            ) from exc
        finally:
            await response.aclose()
        total = time.perf_counter() - started
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            finish_reason = choice.get("finish_reason")
            usage = data.get("usage")
            model = data.get("model") or self.model_name
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(
                response.status_code,
                f"the server's answer is not an OpenAI chat completion: {body[:300]!r}",
            ) from exc
        timings = PredictionTimings(encode=call.image.encode_seconds, total=total)
        return self._finish(
            call,
            content if isinstance(content, str) else str(content),
            reasoning if isinstance(reasoning, str) else None,
            usage if isinstance(usage, dict) else None,
            finish_reason if isinstance(finish_reason, str) else None,
            model if isinstance(model, str) else self.model_name,
            timings,
        )

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
            source: Path, ``http(s)`` URL, bytes, or PIL image.
            user_prompt: The prompt; the task's default prompt when ``None``.
            sampling_params: Sampling configuration; documented defaults when ``None``.

        Returns:
            The stream: iterate it for content tokens, then ``await get_final_response()``.

        Raises:
            MediaError: for an unsupported source type or a missing file (checked at once).
            TypeError: when ``sampling_params`` is not a ``NIMSamplingParams``.
        """
        _check_params(sampling_params)
        validate_source(source)
        return AsyncPredictionStream(self, source, user_prompt, sampling_params)

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
        """Return whether the server answers ``/v1/health/ready`` with HTTP 200."""
        try:
            response = await self._client.get("/v1/health/ready", timeout=min(self._timeout, 10.0))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[str]:
        """Return the model ids the server serves (``/v1/models``).

        Raises:
            ServiceUnavailableError: no server answers.
            ServerError: the server answered with an HTTP error.
        """
        response = await self._get("/v1/models")
        try:
            data = orjson.loads(response.content)
            return [str(item["id"]) for item in data["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ServerError(
                response.status_code, f"unexpected /v1/models answer: {response.content[:200]!r}"
            ) from exc

    async def wire_format(self) -> WireFormat:
        """Return how fields are sent to this server (asking it once for ``dialect="auto"``)."""
        if self._wire is not None:
            return self._wire
        async with self._wire_lock:
            if self._wire is None:
                self._wire = await self._discover_wire()
            return self._wire

    # ------------------------------------------------------------------ internals

    async def _get(self, path: str) -> httpx.Response:
        try:
            response = await self._client.get(path)
        except httpx.ConnectError as exc:
            raise ServiceUnavailableError(self._base_url) from exc
        except httpx.TimeoutException as exc:
            raise PredictionTimeoutError(f"GET {self._base_url}{path} timed out") from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                self._base_url, f"GET {self._base_url}{path} failed: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise _server_error(response.status_code, response.content, response.reason_phrase)
        return response

    async def _discover_wire(self) -> WireFormat:
        version: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for path, target in (("/v1/version", version), ("/v1/metadata", metadata)):
            try:
                response = await self._client.get(path, timeout=min(self._timeout, 10.0))
            except httpx.ConnectError as exc:
                raise ServiceUnavailableError(self._base_url) from exc
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                try:
                    value = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    target.update(value)
        return wire_format_for(version, metadata)

    async def _fetch(self, url: str) -> bytes:
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise MediaError(
                        f"downloading the image {url} failed with HTTP {response.status_code}",
                        source=url,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_DOWNLOAD_BYTES:
                        raise MediaError(
                            f"the image at {url} is larger than {_MAX_DOWNLOAD_BYTES} bytes",
                            source=url,
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise MediaError(f"cannot download the image {url}: {exc}", source=url) from exc

    async def _prepare(
        self,
        source: object,
        user_prompt: str | None,
        sampling_params: NIMSamplingParams | None,
        *,
        stream: bool,
    ) -> _Call:
        if self._closed:
            raise RuntimeError("this predictor is closed; create a new one")
        params = _check_params(sampling_params) or _DEFAULT_PARAMS
        wire = await self.wire_format()
        image = await load_image(source, max_pixels=self._max_pixels, fetch=self._fetch)
        prompt = self._task.build_prompt(user_prompt)
        constraint: Literal["none", "task", "custom"] = "none"
        if params.guided_field is not None:
            schema = params.guided_json_schema()
            constraint = "task" if schema == self._task.output_schema() else "custom"
        body = self._build_body(prompt, params, wire, stream=stream)
        head, sep, tail = body.partition(self._placeholder_json)
        if not sep:  # pragma: no cover - the placeholder is always in the body
            raise AssertionError("image placeholder missing from the request body")
        body = b"".join((head, b'"', image.data_uri, b'"', tail))
        if self._box_format == "qwen25-abs":
            model_input = smart_resize(
                *image.sent_size,
                factor=self._spec.patch_size,
                min_pixels=self._spec.min_pixels,
                max_pixels=self._spec.max_pixels,
            )
        else:
            model_input = image.sent_size
        return _Call(body, prompt, image, model_input, params, constraint)

    def _build_body(
        self, prompt: str, params: NIMSamplingParams, wire: WireFormat, *, stream: bool
    ) -> bytes:
        messages: list[dict[str, Any]] = []
        if self._system_prompt:
            messages.append({"role": "system", "content": self._system_prompt})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": self._placeholder}},
                    {"type": "text", "text": prompt},
                ],
            }
        )
        body: dict[str, Any] = {"model": self.model_name, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        for name in _OPENAI_FIELDS:
            body[name] = getattr(params, name)
        if params.stop is not None:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        extensions: dict[str, Any] = {name: getattr(params, name) for name in _EXTENSION_FIELDS}
        if params.prompt_logprobs is not None:
            extensions["prompt_logprobs"] = params.prompt_logprobs
        guided = params.guided_field
        if guided is not None:
            value: Any = getattr(params, guided)
            if guided == "guided_json":
                value = params.guided_json_schema()
            if wire.guided == "structured_outputs" and not wire.extensions_in_nvext:
                body["structured_outputs"] = {_GUIDED_TO_STRUCTURED[guided]: value}
            else:
                extensions[guided] = value
        if wire.extensions_in_nvext:
            body["nvext"] = extensions
        else:
            body.update(extensions)
        return orjson.dumps(body)

    async def _send(self, body: bytes, *, stream: bool) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        # An absolute httpx.URL skips httpx's per-request URL parsing and merging (~20 µs).
        request = self._client.build_request("POST", self._chat_url, content=body, headers=headers)
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt >= self._retries:
                    raise ServiceUnavailableError(self._base_url) from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt >= self._retries:
                    raise ServiceUnavailableError(
                        self._base_url,
                        f"the connection to the NIM at {self._base_url} broke before it "
                        f"answered: {exc}",
                    ) from exc
            except httpx.TimeoutException as exc:
                raise PredictionTimeoutError(
                    f"the NIM at {self._base_url} did not answer within {self._timeout:g} s"
                ) from exc
            except httpx.HTTPError as exc:
                raise NIMPredictionError(f"request to {self._base_url} failed: {exc}") from exc
            else:
                status = response.status_code
                if status < 400:
                    return response
                try:
                    content = await response.aread()
                except httpx.HTTPError:
                    content = b""
                finally:
                    await response.aclose()
                if status not in _RETRY_STATUSES or attempt >= self._retries:
                    raise _server_error(status, content, response.reason_phrase)
                retry_after = _retry_after(response.headers.get("retry-after"))
            delay = random.uniform(_BACKOFF_BASE / 2, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
            if retry_after is not None:
                delay = min(max(delay, retry_after), _BACKOFF_CAP)
            attempt += 1
            await asyncio.sleep(delay)

    def _finish(
        self,
        call: _Call,
        content: str,
        reasoning: str | None,
        usage: dict[str, Any] | None,
        finish_reason: str | None,
        model: str,
        timings: PredictionTimings,
    ) -> PredictionResponse:
        text = content
        if reasoning and "<think>" not in content:
            text = f"<think>{reasoning}</think>\n{content}"
        usage_model = _usage(usage)
        params = call.params
        if params.guided_field is not None:
            check_guided_output(text, params, finish_reason=finish_reason)
        if call.constraint == "custom":
            thinking, answer = split_thinking(text)
            return TextResponse(
                task_type=self.task_type,
                model=model,
                prompt=call.prompt,
                raw_output=text,
                thinking=thinking,
                usage=usage_model,
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
            usage=usage_model,
            finish_reason=finish_reason,
        )
        parsed = self._task.parse(text, context)
        return parsed.model_copy(update={"timings": timings})


class AsyncPredictionStream:
    """A streamed prediction: an async iterator of content tokens and an async context manager.

    Entering the context (or the first iteration) sends the request; leaving it, breaking out
    of the loop or an error closes the HTTP response. :meth:`get_final_response` reads the
    rest of the stream and returns the parsed response.

    Reasoning sent separately by the server (``reasoning_content``) is not yielded; it is
    kept and appears as ``thinking`` in the final response.

    Attributes:
        request_start_time: ``time.perf_counter()`` just before the request was sent.
        first_token_time: ``perf_counter()`` when the first content token arrived.
        token_times: ``perf_counter()`` of each content piece, in order (pieces that arrived in
            one network read share its timestamp).
        usage: Token accounting from the server, once the stream has finished.
        finish_reason: Why generation ended, once known.
        encode_seconds: Time spent preparing the image.
        chunks: Number of SSE data events received.
    """

    def __init__(
        self,
        predictor: AsyncNIMPredictor,
        source: object,
        user_prompt: str | None,
        sampling_params: NIMSamplingParams | None,
    ) -> None:
        self._predictor = predictor
        self._source = source
        self._user_prompt = user_prompt
        self._params = sampling_params
        self._call: _Call | None = None
        self._response: httpx.Response | None = None
        self._raw: AsyncIterator[bytes] | None = None
        self._decoder = SSEDecoder()
        self._pieces: list[str] = []
        self._reasoning: list[str] = []
        self._pending: list[str] = []
        self._pending_pos = 0
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._saw_done = False
        self._eof = False
        self._closed = False
        self._error: BaseException | None = None
        self._final: PredictionResponse | None = None
        self.request_start_time: float | None = None
        self.first_token_time: float | None = None
        self.token_times: list[float] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.encode_seconds: float = 0.0
        self.chunks = 0

    @property
    def text(self) -> str:
        """The content received so far."""
        return "".join(self._pieces)

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._pending_pos < len(self._pending):
            token = self._pending[self._pending_pos]
            self._pending_pos += 1
            return token
        batch = await self.next_batch()
        self._pending = batch
        self._pending_pos = 1
        return batch[0]

    async def batches(self) -> AsyncIterator[list[str]]:
        """Yield the content tokens in batches: all tokens that arrived in one network read.

        Cheaper than per-token iteration when handing tokens to another thread. Do not mix
        with iterating the stream itself.
        """
        while True:
            try:
                batch = await self.next_batch()
            except StopAsyncIteration:
                return
            yield batch

    async def next_batch(self) -> list[str]:
        """Return the next non-empty list of content tokens.

        Raises:
            StopAsyncIteration: at the end of the stream.
            StreamError: the stream carried an error or broke off (``partial_text`` holds the
                text so far).
            PredictionTimeoutError: no bytes arrived within the timeout.
        """
        if self._error is not None:
            raise self._error
        if self._raw is None:
            await self._open()
        raw = self._raw
        if raw is None:  # pragma: no cover - _open sets it or raises
            raise StopAsyncIteration
        try:
            while not self._eof:
                try:
                    chunk = await raw.__anext__()
                except StopAsyncIteration:
                    self._eof = True
                    tokens = self._handle(self._decoder.close())
                    await self._end_of_body()
                    if tokens:
                        return tokens
                    break
                tokens = self._handle(self._decoder.feed(chunk))
                if tokens:
                    return tokens
        except httpx.TimeoutException as exc:
            await self._fail(
                PredictionTimeoutError(
                    f"no data from {self._predictor.base_url} for "
                    f"{self._predictor._timeout:g} s while streaming"
                ),
                exc,
            )
        except httpx.HTTPError as exc:
            await self._fail(
                StreamError(
                    f"the stream from {self._predictor.base_url} broke off: {exc}",
                    partial_text=self.text,
                ),
                exc,
            )
        except NIMPredictionError as exc:
            await self._fail(exc, None)
        raise StopAsyncIteration

    async def get_final_response(self) -> PredictionResponse:
        """Read the rest of the stream and return the parsed response.

        Returns:
            The task's response (or a ``TextResponse`` for a custom guided constraint).

        Raises:
            StreamError: the stream carried an error or broke off.
            PredictionParseError: the output cannot be parsed.
            GuidedDecodingError: the output violates the requested constraint.
        """
        if self._final is not None:
            return self._final
        while True:
            try:
                await self.next_batch()
            except StopAsyncIteration:
                break
        call = self._call
        if call is None:  # pragma: no cover - next_batch opened the stream
            raise StreamError("the stream was never opened")
        end = self.token_times[-1] if self.token_times else time.perf_counter()
        start = self.request_start_time or end
        timings = PredictionTimings(
            encode=self.encode_seconds,
            time_to_first_token=(
                self.first_token_time - start if self.first_token_time is not None else None
            ),
            total=end - start,
        )
        self._final = self._predictor._finish(
            call,
            self.text,
            "".join(self._reasoning) or None,
            self._usage,
            self.finish_reason,
            self._model or self._predictor.model_name,
            timings,
        )
        return self._final

    async def aclose(self) -> None:
        """Close the HTTP response (the connection is dropped if the body was not finished)."""
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    # ------------------------------------------------------------------ internals

    async def _open(self) -> None:
        if self._closed:
            raise StreamError("this stream is closed", partial_text=self.text)
        if self._raw is not None:
            return
        predictor = self._predictor
        try:
            call = await predictor._prepare(
                self._source, self._user_prompt, self._params, stream=True
            )
            self._call = call
            self.encode_seconds = call.image.encode_seconds
            self.request_start_time = time.perf_counter()
            response = await predictor._send(call.body, stream=True)
        except NIMPredictionError as exc:
            self._error = exc  # iterating again re-raises; the request is never re-sent
            raise
        self._response = response
        if "content-encoding" in response.headers:
            self._raw = response.aiter_bytes()
        else:
            self._raw = response.aiter_raw()

    def _handle(self, events: list[SSEEvent]) -> list[str]:
        # Hot path: plain dict access on orjson output, no objects per chunk. All tokens of
        # one network read share one arrival timestamp (the time the bytes were read).
        tokens: list[str] = []
        loads = orjson.loads
        for event in events:
            data = event.data
            if data == DONE:
                self._saw_done = True
                continue
            self.chunks += 1
            try:
                obj = loads(data)
            except orjson.JSONDecodeError:
                raise StreamError(
                    f"the stream carried an event that is not JSON: {data[:200]!r}",
                    partial_text=self.text + "".join(tokens),
                ) from None
            if type(obj) is not dict:
                continue
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        tokens.append(content)
                    if len(delta) > 1 or content is None:
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if reasoning:
                            self._reasoning.append(reasoning)
                reason = choice.get("finish_reason")
                if reason:
                    self.finish_reason = reason
            elif "error" in obj or obj.get("object") == "error":
                err = obj.get("error", obj)
                message = err.get("message") if isinstance(err, dict) else err
                self._pieces.extend(tokens)
                raise StreamError(
                    f"the server reported an error mid-stream: {message}",
                    partial_text=self.text,
                )
            usage = obj.get("usage")
            if usage:
                self._usage = usage
            if self._model is None:
                self._model = obj.get("model")
        if tokens:
            self._pieces.extend(tokens)
            now = time.perf_counter()
            if self.first_token_time is None:
                self.first_token_time = now
            self.token_times += [now] * len(tokens)
        return tokens

    async def _end_of_body(self) -> None:
        await self.aclose()
        self.usage = _usage(self._usage)
        if not self._saw_done and self.finish_reason is None:
            raise StreamError(
                "the stream ended before the answer was complete (no finish reason, no [DONE])",
                partial_text=self.text,
            )

    async def _fail(self, error: NIMPredictionError, cause: BaseException | None) -> None:
        if cause is not None:
            error.__cause__ = cause
        self._error = error
        await self.aclose()
        raise error


# --------------------------------------------------------------------------- helpers


def _load_run_metadata(config: NIMConfig) -> Any:
    try:
        from nim_async.deploy.weights import load_run_metadata
    except ImportError:  # pragma: no cover - weights.py is part of the package
        return None
    return load_run_metadata(config)


def _check_params(params: object) -> NIMSamplingParams | None:
    if params is None or isinstance(params, NIMSamplingParams):
        return params
    raise TypeError(
        f"sampling_params must be a NIMSamplingParams or None, not {type(params).__name__}"
    )


def _usage(data: dict[str, Any] | None) -> Usage | None:
    if not data:
        return None
    try:
        return Usage(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            total_tokens=int(data.get("total_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _server_error(status: int, content: bytes, reason: str = "") -> ServerError:
    """Build the typed error for an HTTP error answer (both OpenAI error shapes)."""
    message: str | None = None
    error_type: str | None = None
    try:
        data = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = _as_text(err.get("message"))
            error_type = _as_text(err.get("type"))
        elif isinstance(err, str):
            message = err
        if message is None and ("message" in data or data.get("object") == "error"):
            message = _as_text(data.get("message"))
            error_type = error_type or _as_text(data.get("type"))
        if message is None and "detail" in data:
            message = _as_text(data.get("detail"))
    if message is None:
        text = content[:500].decode("utf-8", "replace").strip()
        message = text or reason or "no error message"
    cls: type[ServerError]
    if status in (400, 422):
        cls = BadRequestError
    elif status == 404:
        cls = ModelNotFoundError
    elif status == 429:
        cls = RateLimitError
    else:
        cls = ServerError
    return cls(status, message, error_type=error_type)


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _version_tuple(text: object) -> tuple[int, ...] | None:
    if not isinstance(text, str):
        return None
    match = re.match(r"v?(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def wire_format_for(version: dict[str, Any], metadata: dict[str, Any]) -> WireFormat:
    """Choose how to send fields from a server's ``/v1/version`` and ``/v1/metadata`` answers.

    NIM 1.x (``release`` 1.x) takes extensions under ``nvext``; vLLM >= 0.12 dropped the
    ``guided_*`` fields in favour of ``structured_outputs``; anything else gets top-level
    fields (NIM 2.x).

    Args:
        version: The ``/v1/version`` JSON object (empty when unavailable).
        metadata: The ``/v1/metadata`` JSON object (empty when unavailable).

    Returns:
        The wire format.
    """
    release = _version_tuple(version.get("release")) or _version_tuple(metadata.get("release"))
    api = str(version.get("api") or metadata.get("api") or "")
    if (release is not None and release[0] == 1) or api.lower() == "nvext":
        return _NVEXT_WIRE
    vllm = (
        _version_tuple(version.get("vllm"))
        or _version_tuple(metadata.get("vllm_version"))
        or (_version_tuple(version.get("version")) if release is None else None)
    )
    if vllm is not None and vllm[0] == 0 and vllm >= (0, 12):
        return WireFormat(guided="structured_outputs")
    return _OPENAI_WIRE
