"""``NIMPredictor``: the blocking facade over the async predictor.

The core is :class:`nim_async.predict.predictor.AsyncNIMPredictor`.

Every call runs on the one process-wide event-loop thread (:mod:`nim_async.sync._portal`), so
the facade works from plain scripts and from inside a running event loop (a notebook, or
code under ``asyncio.run``) alike, and one predictor may be used from many threads at once.
Ctrl-C while a call blocks cancels the request.

A predictor that is never closed is closed for you: when it is garbage-collected (the close is
scheduled, never waited for) or, at the latest, when the interpreter exits.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

import anyio

from nim_async.config import NIMSamplingParams
from nim_async.predict.media import validate_source
from nim_async.predict.predictor import AsyncNIMPredictor, _check_params
from nim_async.results import PredictionResponse
from nim_async.sync import _portal
from nim_async.sync._portal import Closer, Send

if TYPE_CHECKING:
    from nim_async.predict.batch import BatchResult
    from nim_async.predict.endpoints import EndpointStatus

__all__ = ["BATCH_WINDOW", "STREAM_WINDOW", "NIMPredictor"]

#: Token batches (one per network read) a blocking stream lets wait for the caller: 16 keeps
#: the loop thread reading ahead of a caller that prints each token (4 measured 9 % fewer tokens/s
#: through the facade, benchmarks/client_overhead.py) and bounds what waits to a few KB.
STREAM_WINDOW = 16
#: Results a blocking ``predict_many`` lets wait for the caller.
BATCH_WINDOW = 1


class NIMPredictor:
    """Predictor for running inference on NIM containers (blocking API).

    Example:
        >>> predictor = NIMPredictor(
        ...     model_name="cosmos-reason1-7b", task_type="phrase-grounding", port=8000
        ... )
        >>> result = predictor(source="image.jpg", stream=False)
        >>> for token in predictor(source="image.jpg", stream=True):
        ...     print(token, end="", flush=True)

    Several servers of one model (replicas): ``NIMPredictor(task_type="vqa",
    endpoints=["http://127.0.0.1:8000", "http://127.0.0.1:8001"])``, or
    ``endpoints=deployer.deploy()`` (a deployment result), or ``config=NIMConfig(replicas=2)``.
    Requests go to the endpoint with the fewest outstanding; one that fails is health-checked
    in the background and a request that had not started streaming moves on (see
    :mod:`nim_async.predict.endpoints`).

    Args:
        model_name: Name of the NIM model (taken from ``config`` when omitted).
        task_type: Task type (``"phrase-grounding"``, ``"vqa"``, ``"freeform"``,
            ``"generic"``, ``"video-freeform"``); from the custom-weights run metadata with
            ``config``, otherwise ``"freeform"`` (vi-sdk's default).
        port: Port where the NIM service runs.
        **kwargs: Keyword arguments of :class:`~nim_async.predict.predictor.AsyncNIMPredictor`
            (``host``, ``base_url``, ``config``, ``system_prompt``, ``box_format``,
            ``dialect``, ``timeout``, ``max_connections``, ``retries``, ``transport``,
            ``max_pixels``, ``endpoints``, ``balancing``, ...).

    Raises:
        ValueError: for an unknown task type or a missing model name.
    """

    def __init__(
        self,
        model_name: str | None = None,
        task_type: str | None = None,
        port: int = 8000,
        **kwargs: Any,
    ) -> None:
        core = AsyncNIMPredictor(model_name, task_type, port, **kwargs)
        self._core = core
        self._closer = Closer(core.aclose)

    # ------------------------------------------------------------------ properties

    @property
    def model_name(self) -> str:
        """The served model name sent with each request."""
        return self._core.model_name

    @property
    def task_type(self) -> str:
        """The task type."""
        return self._core.task_type

    @property
    def base_url(self) -> str:
        """The server's base URL (the first one with several endpoints)."""
        return self._core.base_url

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint's base URL (``(base_url,)`` for one server)."""
        return self._core.endpoints

    def endpoint_status(self) -> list[EndpointStatus]:
        """A snapshot of each endpoint: up or down (and why), requests outstanding and served.

        See :meth:`AsyncNIMPredictor.endpoint_status
        <nim_async.predict.predictor.AsyncNIMPredictor.endpoint_status>`.
        """
        return self._core.endpoint_status()

    @property
    def async_predictor(self) -> AsyncNIMPredictor:
        """The async core (use it only on the facade's loop thread)."""
        return self._core

    def __repr__(self) -> str:
        urls = self.endpoints
        where = f"base_url={self.base_url!r}" if len(urls) == 1 else f"endpoints={list(urls)!r}"
        return (
            f"NIMPredictor(model_name={self.model_name!r}, task_type={self.task_type!r}, {where})"
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection pool. Idempotent; later calls raise ``RuntimeError``."""
        self._closer.close()

    def __del__(self) -> None:
        # Never waits: the close is scheduled on the loop thread (or done by the exit hook).
        closer = getattr(self, "_closer", None)
        if closer is not None:
            closer.close_soon()

    def _check_open(self) -> None:
        if self._closer.closed:
            raise RuntimeError("this NIMPredictor is closed; create a new one")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ calls

    @overload
    def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        stream: Literal[False] = False,
        sampling_params: NIMSamplingParams | None = None,
    ) -> PredictionResponse: ...

    @overload
    def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        *,
        stream: Literal[True],
        sampling_params: NIMSamplingParams | None = None,
    ) -> Generator[str, None, PredictionResponse]: ...

    @overload
    def __call__(
        self,
        source: object,
        user_prompt: str | None,
        stream: Literal[True],
        sampling_params: NIMSamplingParams | None = None,
    ) -> Generator[str, None, PredictionResponse]: ...

    @overload
    def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        stream: bool = False,
        sampling_params: NIMSamplingParams | None = None,
    ) -> PredictionResponse | Generator[str, None, PredictionResponse]: ...

    def __call__(
        self,
        source: object,
        user_prompt: str | None = None,
        stream: bool = False,
        sampling_params: NIMSamplingParams | None = None,
    ) -> PredictionResponse | Generator[str, None, PredictionResponse]:
        """Run inference on an image.

        Args:
            source: Path to the input image (also an ``http(s)`` URL, bytes, or PIL image).
            user_prompt: Custom prompt; the task's default when ``None``.
            stream: Stream the response.
            sampling_params: Sampling configuration; documented defaults when ``None``.

        Returns:
            Non-streaming: the ``PredictionResponse`` (task-specific result). Streaming: a
            ``Generator[str, None, PredictionResponse]`` yielding content tokens whose return
            value (``StopIteration.value``) is the final response. The request is checked at
            once and sent at the first ``next()``; leaving the loop early closes the HTTP
            response. Tokens cross threads through a bounded channel: while the caller does
            not take them, at most ``STREAM_WINDOW`` network reads' worth wait and the
            response is not read further (TCP backpressure reaches the server).

        Raises:
            MediaError: the image cannot be loaded (a missing file is reported at once).
            ServiceUnavailableError: no NIM answers at the configured address.
            ServerError: the server answered with an HTTP error.
            PredictionTimeoutError: the request timed out.
            StreamError: a streamed response broke off or carried an error.
            PredictionParseError: the output cannot be parsed into the task's result.
            GuidedDecodingError: the output violates the requested constraint.
        """
        _check_params(sampling_params)
        if stream:
            validate_source(source)
            self._check_open()
            return self._stream(source, user_prompt, sampling_params)
        self._check_open()
        return _portal.call(self._core.__call__, source, user_prompt, sampling_params)

    def predict_many(
        self, sources: Iterable[Any], **kwargs: Any
    ) -> Generator[BatchResult, None, None]:
        """Score many inputs with bounded concurrency; yield one ``BatchResult`` per input.

        Backpressure: results cross to the caller's thread through a channel of
        ``BATCH_WINDOW`` (1) result, so a caller that does not take results holds the batch.
        At any moment the inputs pulled from ``sources`` are at most the results taken
        plus ``concurrency + 2`` (unordered) or ``reorder_window + 2`` (``ordered=True``).
        Each input is sent at most the predictor's own attempts (``retries + 1``) times
        ``1 + retries`` of the batch (default 0): see :mod:`nim_async.predict.batch`.

        Args:
            sources: The inputs (any source ``__call__`` accepts), read lazily.
            **kwargs: ``concurrency``, ``user_prompt``, ``sampling_params``, ``ordered``,
                ``retries``, ``progress`` (``True``: a progress bar on stderr, or a
                :class:`~nim_async.predict.batch.BatchProgress`), ``total``
                (see :func:`nim_async.predict.batch.predict_many`).

        Returns:
            A generator of results; closing it early cancels the outstanding requests.
        """
        self._check_open()
        if kwargs.get("progress") is True:
            from nim_async.ui.batch_progress import RichBatchProgress

            kwargs = {**kwargs, "progress": RichBatchProgress()}
        return self._batch(sources, kwargs)

    def health_ready(self) -> bool:
        """Return whether the server reports ready (``/v1/health/ready`` answers 200)."""
        self._check_open()
        return _portal.call(self._core.health_ready)

    def list_models(self) -> list[str]:
        """Return the model ids the server serves.

        Raises:
            ServiceUnavailableError: no server answers.
            ServerError: the server answered with an HTTP error.
        """
        self._check_open()
        return _portal.call(self._core.list_models)

    # ------------------------------------------------------------------ internals

    def _stream(
        self,
        source: object,
        user_prompt: str | None,
        sampling_params: NIMSamplingParams | None,
    ) -> Generator[str, None, PredictionResponse]:
        async def produce(send: Send[str]) -> PredictionResponse:
            # Reaching the core through ``self`` keeps the facade (and so its connection
            # pool) alive as long as the generator: ``NIMPredictor(...)(..., stream=True)``.
            async with self._core.stream(source, user_prompt, sampling_params) as stream:
                async for batch in stream.batches():
                    await send(batch)
                return await stream.get_final_response()

        return _portal.iterate(produce, window=STREAM_WINDOW)

    def _batch(
        self, sources: Iterable[Any], kwargs: dict[str, Any]
    ) -> Generator[BatchResult, None, None]:
        async def produce(send: Send[BatchResult]) -> None:
            results = self._core.predict_many(sources, **kwargs)  # ``self``: as in _stream
            try:
                async for item in results:
                    await send((item,))
            finally:
                aclose = getattr(results, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

        return _portal.iterate(produce, window=BATCH_WINDOW)
