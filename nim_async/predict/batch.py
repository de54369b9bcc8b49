"""Bounded-concurrency scoring of many inputs against one NIM (``predict_many``).

:func:`predict_many` reads its sources lazily (a generator of 10⁵ paths is never turned into a
list), keeps at most ``concurrency`` requests in flight and yields exactly one
:class:`BatchResult` per input: the response, or the error that ended that input. One bad
image never aborts the batch.

Retries follow the one policy of :mod:`nim_async.http.retry`. The predictor already applies it
to every request (``AsyncNIMPredictor(retries=3)``: up to 4 sends), so by default the batch
adds no attempts of its own: **each input is sent at most the predictor's attempts times
``1 + retries``** (``retries`` of the batch, default 0), i.e. 4 sends with the defaults. The
batch's policy also retries an input whose stream broke mid-way, which the predictor cannot
resend (it has handed tokens out by then). Give the batch retries for a predictor that does
not retry by itself (``retries=0``), as ``nim-async batch`` does: then ``1 + retries`` sends
per input is the whole budget, for refused connections, 503s and broken streams alike.

With a predictor over several endpoints (``AsyncNIMPredictor(endpoints=[...])``, see
:mod:`nim_async.predict.endpoints`), an input the batch runs again goes to an endpoint other
than the ones that failed it while one is up, and then without the batch's backoff (that
endpoint has not failed it); the attempts stay as above. An input is yielded once, when it
ended: a retried input leaves no record of the attempt that failed, so a results file
(:class:`~nim_async.predict.journal.BatchJournal`) gets one line per input.

Progress is reported through a plain :class:`BatchProgress` object (start, advance, finish);
``progress=True`` draws a plain text line on stderr. Rich displays live in
:mod:`nim_async.ui.batch_progress`.

Leaving the ``async for`` early (``break``, an exception, cancellation) cancels the requests in
flight and waits for them, so no task outlives the iterator. Wrap it in
:func:`contextlib.aclosing` to make that happen at once rather than at garbage collection.

The module also turns results into JSON records (:func:`result_record`), the line format of
``nim-async batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from nim_async.errors import NIMError, NIMPredictionError
from nim_async.http.retry import RetryPolicy
from nim_async.predict.endpoints import Route, route_scope
from nim_async.predict.sources import source_label
from nim_async.results import PredictionResponse

if TYPE_CHECKING:
    from nim_async.config import NIMSamplingParams

__all__ = [
    "BatchProgress",
    "BatchResult",
    "Predictor",
    "is_retryable",
    "predict_many",
    "result_record",
    "source_label",
]


class Predictor(Protocol):
    """What :func:`predict_many` needs: an awaitable call per source (``AsyncNIMPredictor``)."""

    def __call__(
        self,
        source: Any,
        user_prompt: str | None = None,
        sampling_params: NIMSamplingParams | None = None,
    ) -> Awaitable[PredictionResponse]:
        """Predict one source."""
        ...


@dataclass(slots=True)
class BatchResult:
    """The outcome of one input of a batch.

    Attributes:
        index: Position of the input in ``sources`` (0-based).
        source: The input as given (path, URL, bytes, PIL image).
        response: The prediction, or ``None`` when the input failed.
        error: The error that ended the input, or ``None`` when it succeeded.
        attempts: How many times the batch called the predictor for this input (1 + the
            batch's retries used; the predictor's own resends are not counted here).
        elapsed: Seconds from the first attempt to the outcome, backoff included.
    """

    index: int
    source: object
    response: PredictionResponse | None
    error: NIMError | None
    attempts: int
    elapsed: float

    @property
    def ok(self) -> bool:
        """Whether the input produced a response."""
        return self.error is None and self.response is not None


class BatchProgress(Protocol):
    """Receives the progress of a batch (what a progress display needs)."""

    def start(self, total: int | None) -> None:
        """The batch starts; ``total`` inputs when known."""
        ...

    def advance(self, ok: bool) -> None:
        """One input finished (``ok``: it produced a response)."""
        ...

    def finish(self) -> None:
        """The batch ended (also when it was abandoned or failed)."""
        ...


_DEFAULT_POLICY = RetryPolicy(broken_streams=True)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is worth another attempt under the one retry policy.

    Retryable: no server answering (it may be restarting), HTTP 429, 502, 503 and 504 (see
    :class:`~nim_async.http.retry.RetryPolicy`), and a stream that broke mid-way (the batch
    runs the whole input again). Not retryable: HTTP 500 and other statuses, timeouts, bad
    requests, unreadable images, parse errors.

    Args:
        error: The exception an attempt raised.
    """
    return _DEFAULT_POLICY.is_retryable(error)


def result_record(result: BatchResult) -> dict[str, Any]:
    """The JSON record of one result: the line format of ``nim-async batch``.

    ``{"source", "index", "status": "ok"|"error", "result" | "error", "attempts",
    "elapsed", ...}``; an ok record also carries ``task_type``, ``model``, ``usage`` and the
    client ``timings``; an error record carries ``error = {"type", "message", ...}``.

    Args:
        result: The batch result.

    Returns:
        A dict of JSON-serialisable values.
    """
    record: dict[str, Any] = {
        "source": source_label(result.source),
        "index": result.index,
        "status": "ok" if result.ok else "error",
    }
    if result.response is not None and result.error is None:
        response = result.response
        record["task_type"] = response.task_type
        record["model"] = response.model
        record["result"] = response.plain_result
        if response.thinking:
            record["thinking"] = response.thinking
        record["finish_reason"] = response.finish_reason
        record["usage"] = response.usage.model_dump() if response.usage else None
        if response.image_size is not None:
            record["image_size"] = list(response.image_size)
        record["timings"] = response.timings.model_dump() if response.timings else None
    else:
        error = result.error
        info: dict[str, Any] = {
            "type": type(error).__name__ if error is not None else "NIMError",
            "message": str(error) if error is not None else "no response",
        }
        status_code = getattr(error, "status_code", None)
        if isinstance(status_code, int):
            info["status_code"] = status_code
        raw_output = getattr(error, "raw_output", None)
        if isinstance(raw_output, str):
            info["raw_output"] = raw_output
        record["error"] = info
    record["attempts"] = result.attempts
    record["elapsed"] = round(result.elapsed, 6)
    return record


async def _predict_one(
    predictor: Predictor,
    index: int,
    source: object,
    *,
    user_prompt: str | None,
    sampling_params: NIMSamplingParams | None,
    policy: RetryPolicy,
) -> BatchResult:
    start = time.perf_counter()
    with route_scope() as route:
        retry = policy.start(label=f"batch input {index}", sleep=partial(_route_sleep, route))
        while True:
            try:
                response = await predictor(
                    source, user_prompt=user_prompt, sampling_params=sampling_params
                )
            except NIMError as exc:
                route.avoid_last()  # an endpoint of several that failed this input: not again
                if await retry.backoff(exc):
                    continue
                error: NIMError = exc
            except Exception as exc:  # one bad input must not abort the batch
                error = NIMPredictionError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                return BatchResult(
                    index, source, response, None, retry.attempts, time.perf_counter() - start
                )
            return BatchResult(
                index, source, None, error, retry.attempts, time.perf_counter() - start
            )


async def _route_sleep(route: Route, wait: float) -> None:
    # The batch's backoff spares a server that failed; an endpoint not tried yet has not failed.
    await asyncio.sleep(0.0 if route.has_alternative() else wait)


class _Sources:
    """Pull sources one at a time from a sync or async iterable."""

    def __init__(self, sources: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(sources, AsyncIterable):
            self._async = aiter(sources)
        else:
            self._sync = iter(sources)
        self.exhausted = False

    async def next(self) -> tuple[bool, Any]:
        if self.exhausted:
            return False, None
        try:
            if self._async is not None:
                return True, await anext(self._async)
            assert self._sync is not None
            return True, next(self._sync)
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            return False, None


class _TextProgress:
    """``progress=True``: one plain line on stderr, redrawn on a terminal, final at the end."""

    _EVERY = 0.2  # seconds between redraws

    def __init__(self, description: str = "scoring") -> None:
        self._description = description
        self._total: int | None = None
        self._done = self._failed = 0
        self._start = self._drawn = 0.0
        self._tty = bool(getattr(sys.stderr, "isatty", lambda: False)())

    def start(self, total: int | None) -> None:
        self._total = total
        self._start = time.perf_counter()

    def advance(self, ok: bool) -> None:
        self._done += 1
        self._failed += not ok
        now = time.perf_counter()
        if self._tty and now - self._drawn >= self._EVERY:
            self._drawn = now
            sys.stderr.write("\r" + self._line(now))
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write(("\r" if self._tty else "") + self._line(time.perf_counter()) + "\n")
        sys.stderr.flush()

    def _line(self, now: float) -> str:
        total = "?" if self._total is None else str(self._total)
        rate = self._done / max(now - self._start, 1e-9)
        return f"{self._description} {self._done}/{total}  {self._failed} failed  {rate:.1f}/s"


def _batch_policy(
    concurrency: int, retries: int, backoff: float, backoff_cap: float, retry: RetryPolicy | None
) -> RetryPolicy:
    """The batch's policy: ``retry`` if given, else from ``retries`` and the backoff (checked)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if retries < 0:
        raise ValueError(f"retries must be at least 0, got {retries}")
    return retry or RetryPolicy.from_retries(
        retries,
        base=max(backoff, 0.0),
        cap=max(backoff_cap, backoff, 0.0),
        broken_streams=True,
    )


class _InFlight:
    """The tasks of a batch: at most ``concurrency`` running, and the ordered window.

    Args:
        run: Starts the work of one input (``run(index, source)``).
        feed: Where the inputs come from.
        concurrency: Most tasks running at once.
        window: With ordered output, most inputs started but not yet released; ``None``:
            unordered (a result is released as soon as it is finished).
    """

    def __init__(
        self,
        run: Callable[[int, object], Awaitable[BatchResult]],
        feed: _Sources,
        concurrency: int,
        window: int | None,
    ) -> None:
        self._run = run
        self._feed = feed
        self._concurrency = concurrency
        self._window = window
        self._pending: set[asyncio.Future[BatchResult]] = set()
        self._waiting: dict[int, BatchResult] = {}
        self._next_index = 0
        self._next_to_yield = 0

    async def fill(self) -> bool:
        """Start inputs while a slot (and the window) has room; whether any task is running."""
        while len(self._pending) < self._concurrency and not self._feed.exhausted:
            if self._window is not None and self._next_index - self._next_to_yield >= self._window:
                break
            has_item, source = await self._feed.next()
            if not has_item:
                break
            self._pending.add(asyncio.ensure_future(self._run(self._next_index, source)))
            self._next_index += 1
        return bool(self._pending)

    async def finished(self) -> list[BatchResult]:
        """Wait for at least one task; the results that ended, in input order."""
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        self._pending.difference_update(done)
        return sorted((task.result() for task in done), key=lambda r: r.index)

    def release(self, result: BatchResult) -> Iterator[BatchResult]:
        """The results ``result`` lets out: itself unordered; ordered, the run it completes."""
        if self._window is None:
            yield result
            return
        self._waiting[result.index] = result
        while self._next_to_yield in self._waiting:
            yield self._waiting.pop(self._next_to_yield)
            self._next_to_yield += 1

    async def cancel(self) -> None:
        """Cancel the tasks still running and wait for them."""
        for task in self._pending:
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()


async def predict_many(
    predictor: Predictor,
    sources: Iterable[Any] | AsyncIterable[Any],
    *,
    concurrency: int = 32,
    user_prompt: str | None = None,
    sampling_params: NIMSamplingParams | None = None,
    ordered: bool = False,
    retries: int = 0,
    progress: bool | BatchProgress = False,
    backoff: float = 0.5,
    backoff_cap: float = 10.0,
    reorder_window: int | None = None,
    total: int | None = None,
    retry: RetryPolicy | None = None,
) -> AsyncGenerator[BatchResult, None]:
    """Predict many sources with bounded concurrency; yield one result per input.

    Sources are pulled only when a request slot is free (and, when ``ordered``, when the
    reorder window has room), so memory does not grow with the number of inputs.

    Args:
        predictor: An ``AsyncNIMPredictor`` (anything awaitable as
            ``predictor(source, user_prompt=..., sampling_params=...)``).
        sources: Paths, URLs, bytes or images; any iterable or async iterable, read lazily.
        concurrency: Most requests in flight at once (≥ 1).
        user_prompt: Prompt sent with every source (``None``: the task's default).
        sampling_params: Sampling parameters for every request.
        ordered: Yield in input order. Completed results wait in a window of at most
            ``reorder_window`` inputs; new inputs start only while the window has room.
        retries: Extra calls of the predictor for an input whose error the one retry policy
            retries (see :func:`is_retryable`), after the predictor's own attempts: the most
            sends per input are the predictor's attempts × ``(1 + retries)``. Default 0: the
            predictor's policy alone applies (it retries already).
        progress: ``True`` for a plain progress line on stderr, or a :class:`BatchProgress`
            (e.g. :class:`nim_async.ui.batch_progress.RichBatchProgress`).
        backoff: Base of the batch's backoff in seconds (:class:`RetryPolicy` ``base``).
        backoff_cap: Longest single backoff of the batch in seconds.
        reorder_window: Size of the ordered window; default ``4 * concurrency``.
        total: Number of inputs for the progress display; ``len(sources)`` if it has one.
        retry: The batch's whole retry policy (overrides ``retries``, ``backoff`` and
            ``backoff_cap``; e.g. with a ``deadline``).

    Yields:
        One :class:`BatchResult` per input, with ``response`` or ``error`` set.

    Raises:
        ValueError: if ``concurrency`` < 1, ``retries`` < 0 or ``reorder_window`` < concurrency.
    """
    policy = _batch_policy(concurrency, retries, backoff, backoff_cap, retry)
    window = reorder_window if reorder_window is not None else 4 * concurrency
    if window < concurrency:
        raise ValueError(f"reorder_window ({window}) must be at least concurrency ({concurrency})")
    if total is None and isinstance(sources, Sized):
        with contextlib.suppress(TypeError):
            total = len(sources)
    run = partial(
        _predict_one,
        predictor,
        user_prompt=user_prompt,
        sampling_params=sampling_params,
        policy=policy,
    )
    batch = _InFlight(run, _Sources(sources), concurrency, window if ordered else None)
    bar: BatchProgress | None = _TextProgress() if progress is True else progress or None
    try:
        if bar is not None:
            bar.start(total)
        while await batch.fill():
            for result in await batch.finished():
                if bar is not None:
                    bar.advance(result.ok)
                for ready in batch.release(result):
                    yield ready
    finally:
        await batch.cancel()
        if bar is not None:
            bar.finish()
