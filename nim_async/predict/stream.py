"""A streamed prediction: :class:`AsyncPredictionStream`, a thin object over the accumulator.

The stream knows nothing of request bodies or retries: the predictor hands it an ``open``
coroutine function that prepares and sends the request and returns an :class:`Exchange` (the
HTTP answer plus how to finish). The stream frames the body with the SSE decoder, feeds the
events to :class:`~nim_async.protocol.stream.StreamAccumulator`, stamps arrival times, and asks
the exchange to turn the result into the task's response. Its lifecycle is one
:class:`StreamState`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Protocol, Self

import anyio

from nim_async.errors import NIMPredictionError, PredictionTimeoutError, StreamError
from nim_async.http.client import ChatResponse
from nim_async.http.transport import timer_context
from nim_async.protocol.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from nim_async.protocol.stream import StreamAccumulator, StreamResult, usage_from
from nim_async.results import PredictionResponse, PredictionTimings, Usage

__all__ = ["AsyncPredictionStream", "Exchange", "StreamState"]

_SLICE_BYTES = 16 * 1024
"""A network read longer than this is decoded in slices of about this size, one loop step
each: a client that fell behind a fast server can receive 256 KiB (over a thousand chunks) in
one read, which decoded at once would hold the event loop for milliseconds."""


class StreamState(enum.Enum):
    """Where a stream is in its life."""

    NEW = "new"
    """Not sent yet (sent on ``async with`` or the first iteration)."""
    STREAMING = "streaming"
    """The answer is arriving."""
    ENDED = "ended"
    """The body was read to its end."""
    FAILED = "failed"
    """Sending or reading failed; iterating again re-raises the error (nothing is re-sent)."""
    CLOSED = "closed"
    """Closed before its end (``aclose``, ``break`` out of ``async with``)."""


class Exchange(Protocol):
    """One sent streaming request, as the predictor hands it to the stream."""

    response: ChatResponse
    encode_seconds: float
    sent_at: float

    def finish(self, result: StreamResult, timings: PredictionTimings) -> PredictionResponse:
        """Turn the accumulated stream into the task's response (checks, parsing)."""
        ...


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
        encode_seconds: Time spent preparing the image.
        state: The :class:`StreamState`.
    """

    def __init__(
        self,
        open_: Callable[[], Awaitable[Exchange]],
        *,
        idle_timeout: float | None = None,
        deadline: float | None = None,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        """Create a stream (the predictor does: see ``AsyncNIMPredictor.stream``).

        Args:
            open_: Sends the request and returns the exchange.
            idle_timeout: Seconds allowed between server-sent *data* events (bytes that carry
                none, such as comment keep-alives, do not reset it); ``None``: no limit.
            deadline: Seconds for the whole stream from opening it; ``None``: no limit.
            max_event_bytes: The largest single event accepted.
        """
        self._open_exchange = open_
        self._exchange: Exchange | None = None
        self._idle = idle_timeout
        self._deadline = deadline
        self._deadline_at: float | None = None
        self._idle_at: float | None = None
        # The timeout watchdog: one timer per stream, not one per read (see _on_watch).
        self._watch: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[object] | None = None
        self._expired = False
        self._cancelling = 0
        self._response_closed = False
        self._decoder = SSEDecoder(max_event_bytes)
        self._acc = StreamAccumulator()
        self._pending: list[str] | tuple[()] = ()  # the batch being handed out by __anext__
        self._pending_pos = 0
        self._big: bytes = b""  # a large network read being decoded a slice at a time
        self._big_pos = 0
        self._error: BaseException | None = None
        self._final: PredictionResponse | None = None
        self.state = StreamState.NEW
        self.request_start_time: float | None = None
        self.first_token_time: float | None = None
        self.token_times: list[float] = []
        self.usage: Usage | None = None
        self.encode_seconds: float = 0.0

    @property
    def text(self) -> str:
        """The content received so far."""
        return self._acc.text

    @property
    def finish_reason(self) -> str | None:
        """Why generation ended, once known."""
        return self._acc.finish_reason

    @property
    def chunks(self) -> int:
        """Number of SSE data events received."""
        return self._acc.chunks

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
        if self.state is StreamState.NEW:
            await self._open()
        exchange = self._exchange
        if self.state is not StreamState.STREAMING or exchange is None:
            if self.state is StreamState.CLOSED:
                raise StreamError("this stream is closed", partial_text=self.text)
            raise StopAsyncIteration
        response = exchange.response
        acc = self._acc
        decoder = self._decoder
        idle = self._idle
        loop = self._loop
        assert loop is not None  # set when the stream opened
        reader = None
        if idle is not None or self._deadline_at is not None:
            # The watchdog cancels this task if it is still reading here once the limit
            # passed; data events only move _idle_at (no timer per read).
            reader = self._reader = asyncio.current_task()
            if self._watch is None:
                self._arm()
        try:
            while True:
                chunk: bytes | None
                if self._big:
                    # The rest of a large read: let the loop run between its slices.
                    await asyncio.sleep(0)
                    if self._closed_meanwhile():
                        self._big = b""
                        raise StreamError("this stream is closed", partial_text=self.text)
                    chunk = self._slice()
                else:
                    chunk = await response.next_chunk()
                    if chunk is not None and len(chunk) > _SLICE_BYTES:
                        self._big, self._big_pos = chunk, 0
                        chunk = self._slice()
                if chunk is None:
                    self._reader = None
                    tokens = acc.feed(decoder.close())
                    self._stamp(tokens)
                    await self._end_of_body()
                    if tokens:
                        return tokens
                    raise StopAsyncIteration
                events = decoder.feed_data(chunk)
                if events:
                    if idle is not None:
                        # the idle limit counts from the last data event (keep-alive
                        # comments do not move it), capped by the deadline
                        self._idle_at = loop.time() + idle
                    tokens = acc.feed_data(events)
                    if tokens:
                        self._stamp(tokens)
                        return tokens
        except asyncio.CancelledError:
            self._reader = None
            if not self._expired or reader is None:
                raise
            self._expired = False
            if reader.uncancel() > self._cancelling:
                raise  # cancelled from outside too: that cancellation wins
            error = self._timeout_error()
            await self._fail(error)
            raise error from TimeoutError()
        except NIMPredictionError as exc:
            self._reader = None
            if self._closed_meanwhile():
                raise  # closed by another task while this one was reading: it stays closed
            if isinstance(exc, StreamError) and not exc.partial_text:
                exc.partial_text = acc.text  # joined only on failure, never per chunk
            await self._fail(exc)
            raise
        finally:
            self._reader = None

    def _closed_meanwhile(self) -> bool:
        # Another task's aclose() while this one waited (the state checks above predate it).
        return self.state is StreamState.CLOSED

    def _slice(self) -> bytes:
        # The next slice of the large read: up to the first event end past _SLICE_BYTES.
        big, start = self._big, self._big_pos
        cut = big.find(b"\n\n", start + _SLICE_BYTES) + 2
        if cut < 2 or cut >= len(big):
            self._big, self._big_pos = b"", 0
            return big[start:] if start else big
        self._big_pos = cut
        return big[start:cut]

    def _arm(self) -> None:
        limit = self._limit_at()
        if limit is not None:
            self._watch = asyncio.get_running_loop().call_at(
                limit, self._on_watch, context=timer_context()
            )

    def _disarm(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    def _on_watch(self) -> None:
        # The timer fired at a limit that data events may have moved since: re-arm for the
        # new one, or, if the limit really passed while a task is reading, cancel that task
        # (next_batch turns the cancellation into PredictionTimeoutError). A stream nobody
        # reads is left unarmed; the next next_batch arms it again.
        self._watch = None
        reader = self._reader
        if reader is None or self.state is not StreamState.STREAMING:
            return
        limit = self._limit_at()
        if limit is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < limit:
            self._watch = loop.call_at(limit, self._on_watch, context=timer_context())
            return
        self._expired = True
        self._cancelling = reader.cancelling()
        reader.cancel()

    def _limit_at(self) -> float | None:
        idle, total = self._idle_at, self._deadline_at
        if idle is None or total is None:
            return idle if total is None else total
        return min(idle, total)

    def _timeout_error(self) -> PredictionTimeoutError:
        now = asyncio.get_running_loop().time()
        if self._deadline_at is not None and now >= self._deadline_at - 1e-3:
            return PredictionTimeoutError(
                f"the stream did not finish within stream_deadline={self._deadline:g} s"
            )
        return PredictionTimeoutError(
            f"the server sent no data event for {self._idle:g} s (timeout; SSE comment "
            "keep-alives do not count)"
        )

    def _stamp(self, tokens: list[str]) -> None:
        # All tokens of one network read share one arrival timestamp.
        if tokens:
            now = time.perf_counter()
            if self.first_token_time is None:
                self.first_token_time = now
            self.token_times += [now] * len(tokens)

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
        exchange = self._exchange
        if exchange is None:  # pragma: no cover - next_batch opened the stream or raised
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
        self._final = exchange.finish(self._acc.final(), timings)
        return self._final

    async def aclose(self) -> None:
        """Close the HTTP response (the connection is dropped if the body was not finished)."""
        if self.state in (StreamState.NEW, StreamState.STREAMING):
            self.state = StreamState.CLOSED
        self._disarm()
        exchange = self._exchange
        if exchange is not None and not self._response_closed:
            with anyio.CancelScope(shield=True):
                await exchange.response.aclose()
            self._response_closed = True  # leaving ``async with`` after the end: no second close

    # ------------------------------------------------------------------ internals

    async def _open(self) -> None:
        if self.state is StreamState.CLOSED:
            raise StreamError("this stream is closed", partial_text=self.text)
        if self.state is not StreamState.NEW:
            return
        loop = self._loop = asyncio.get_running_loop()
        opened = loop.time()
        try:
            exchange = await self._open_exchange()
        except NIMPredictionError as exc:
            self._error = exc  # iterating again re-raises; the request is never re-sent
            self.state = StreamState.FAILED
            raise
        self._exchange = exchange
        if self._idle is not None:
            # this stream's watchdog bounds every wait: the client needs no read timer
            exchange.response.watched(self._idle)
        now = loop.time()
        if self._idle is not None:
            self._idle_at = now + self._idle
        if self._deadline is not None:
            self._deadline_at = opened + self._deadline
        self.encode_seconds = exchange.encode_seconds
        self.request_start_time = exchange.sent_at
        self.state = StreamState.STREAMING

    async def _end_of_body(self) -> None:
        self.state = StreamState.ENDED
        await self.aclose()
        self.usage = usage_from(self._acc.usage)
        if not self._acc.saw_done and self._acc.finish_reason is None:
            raise StreamError(
                "the stream ended before the answer was complete (no finish reason, no [DONE])",
                partial_text=self.text,
            )

    async def _fail(self, error: NIMPredictionError) -> None:
        self._error = error
        self.state = StreamState.FAILED
        await self.aclose()
