"""The one process-wide event-loop thread behind the blocking facade.

The blocking objects (``NIMPredictor``, ``NIMDeployer``) run the async core on one asyncio loop
that lives in a daemon thread. The thread starts on first use and is kept for the life of the
process: nothing ever waits for it to stop, so no finalizer and no interpreter shutdown can hang
on it. Three rules keep every script's exit clean:

* :func:`call` blocks the calling thread until the coroutine finishes. Ctrl-C while it waits
  cancels the task and waits (briefly, bounded) for its clean-up before re-raising.
* An async resource a facade object owns (the predictor's aiohttp session) is registered as a
  :class:`Closer`. ``close()`` closes it and waits; a finalizer (``__del__``) only *schedules*
  the close and never waits, in any thread, also during interpreter shutdown.
* An :mod:`atexit` hook closes every resource still open, finishes the scheduled closes and
  cancels what is left, all within :data:`EXIT_WAIT` seconds, then stops the loop. So a script
  that never calls ``close()`` ends without "Unclosed client session" on stderr.

:func:`iterate` hands items from a producer on the loop to a plain generator in the caller's
thread through a bounded channel: the producer waits while ``window`` items are untaken.

Errors that nobody can receive any more (a task failing after its caller left) are logged on
the ``nim_async`` logger, never written to stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["EXIT_WAIT", "Closer", "Send", "call", "call_soon", "iterate"]

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[Iterable[T]], Awaitable[None]]
"""Hands a batch of items from the loop to the caller's thread; waits while the channel is full."""

#: Seconds the exit hook may spend closing what is still open.
EXIT_WAIT = 3.0
#: Seconds a cancelled call or abandoned iteration waits for its clean-up by default.
CANCEL_WAIT = 5.0

logger = logging.getLogger("nim_async")

_ITEMS, _DONE, _ERROR = 0, 1, 2


class _Loop:
    """The loop thread and the registry of open resources (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.stopped = False
        self.open: dict[int, Callable[[], Awaitable[object]]] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.hooked = False
        self.keys = itertools.count()

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use.

        Raises:
            RuntimeError: after the exit hook stopped it (the interpreter is exiting).
        """
        loop = self.loop
        if loop is not None and not self.stopped:
            return loop
        with self.lock:
            if self.stopped:
                raise RuntimeError("nim_async's event-loop thread has stopped (interpreter exit)")
            if self.loop is None:
                loop = asyncio.new_event_loop()
                loop.set_exception_handler(_log_loop_error)
                started = threading.Event()
                thread = threading.Thread(
                    target=_run_loop, args=(loop, started), name="nim_async-loop", daemon=True
                )
                thread.start()
                started.wait()
                self.thread = thread
                self.loop = loop
                if not self.hooked:
                    atexit.register(_at_exit)
                    self.hooked = True
            return self.loop

    def on_loop_thread(self) -> bool:
        """Whether the current thread is the loop thread."""
        return self.thread is not None and threading.current_thread() is self.thread


_STATE = _Loop()


def _reset_after_fork() -> None:
    # The loop thread does not exist in a forked child; its first use starts a new one.
    global _STATE
    _STATE = _Loop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _run_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    logger.debug(
        "nim_async loop: %s%s",
        context.get("message", "unhandled error"),
        f" ({type(exc).__name__})" if exc is not None else "",
    )


class _Job(Generic[T]):
    """A coroutine run as a task on the loop, observable and cancellable from any thread."""

    __slots__ = ("_args", "_cancelled", "_done", "_error", "_fn", "_loop", "_result", "_task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._done = threading.Event()
        self._task: asyncio.Task[T] | None = None
        self._cancelled = False
        self._result: T | None = None
        self._error: BaseException | None = None
        loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self._cancelled:
            self._error = asyncio.CancelledError()
            self._done.set()
            return
        try:
            self._task = self._loop.create_task(self._fn(*self._args))
        except BaseException as exc:  # fn raised before returning a coroutine
            self._error = exc
            self._done.set()
            return
        self._task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._error = asyncio.CancelledError()
        elif (error := task.exception()) is not None:
            self._error = error
        else:
            self._result = task.result()
        self._done.set()

    def _cancel_on_loop(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        """Ask the task to stop (returns at once; see :meth:`wait`)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self._loop.call_soon_threadsafe(self._cancel_on_loop)

    @property
    def done(self) -> bool:
        """Whether the task finished (result, error or cancellation)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task finished (``timeout`` seconds at most); whether it did."""
        return self._done.wait(timeout)

    def result(self) -> T:
        """Block for the outcome: the return value, or the task's error re-raised.

        Raises:
            RuntimeError: the exit hook cancelled the task (the interpreter is exiting).
        """
        self._done.wait()
        if isinstance(self._error, asyncio.CancelledError):
            raise RuntimeError("nim_async's event loop stopped: the interpreter is exiting")
        if self._error is not None:
            error, self._error = self._error, None
            try:
                raise error
            finally:
                del error
        return self._result  # type: ignore[return-value]


def _submit(fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...]) -> _Job[T]:
    if _STATE.on_loop_thread():
        raise RuntimeError(
            "a blocking nim_async call was made on nim_async's own event-loop thread; "
            "use the async API (AsyncNIMPredictor, AsyncNIMDeployer) there"
        )
    return _Job(_STATE.get(), fn, args)


def _may_wait() -> bool:
    """Whether this thread may wait for the loop (never on it, never during shutdown)."""
    return not sys.is_finalizing() and not _STATE.on_loop_thread() and not _STATE.stopped


def call(
    fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, cleanup_wait: float = CANCEL_WAIT
) -> T:
    """Run ``fn(*args)`` on the loop thread and block until it finishes.

    Exceptions raised by ``fn`` cross unchanged. Ctrl-C (``KeyboardInterrupt``) while waiting
    cancels the task, waits up to ``cleanup_wait`` seconds for its clean-up (closing a response,
    removing a half-created container), and is re-raised.

    Args:
        fn: An async function.
        *args: Its positional arguments.
        cleanup_wait: Seconds to wait for the cancelled task's clean-up after Ctrl-C.

    Returns:
        What ``fn`` returned.

    Raises:
        RuntimeError: when called on the loop thread itself, or after the interpreter began
            to exit.
    """
    job = _submit(fn, args)
    try:
        return job.result()
    except KeyboardInterrupt:
        job.cancel()
        if _may_wait():
            job.wait(cleanup_wait)
        raise


def call_soon(fn: Callable[..., Coroutine[Any, Any, object]], *args: Any) -> None:
    """Schedule ``fn(*args)`` on the loop and return at once (never blocks, never raises).

    The exit hook waits (bounded) for what was scheduled. Errors are logged, not raised.
    Does nothing once the loop has stopped.

    Args:
        fn: An async function.
        *args: Its positional arguments.
    """
    state = _STATE
    loop = state.loop
    if loop is None or state.stopped:
        return

    def start() -> None:
        try:
            future = asyncio.ensure_future(_quietly(fn, *args))
        except BaseException:  # pragma: no cover - fn raised before returning a coroutine
            logger.debug("nim_async: a scheduled close failed to start", exc_info=True)
            return
        state.closing.add(future)
        future.add_done_callback(state.closing.discard)

    with contextlib.suppress(RuntimeError):  # loop closed meanwhile
        loop.call_soon_threadsafe(start)


async def _quietly(fn: Callable[..., Coroutine[Any, Any, object]], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        logger.debug("nim_async: a scheduled close failed (%s)", type(exc).__name__)


class Closer:
    """Closes one async resource on the loop exactly once: now, soon, or at exit.

    Args:
        aclose: The resource's async close (``core.aclose``). It is held, with what it
            references, until the close ran: keep the facade object out of it.
    """

    __slots__ = ("_key",)

    def __init__(self, aclose: Callable[[], Coroutine[Any, Any, object]]) -> None:
        # No lock: a finalizer may run inside any allocation, also in a thread holding one.
        # next(count), dict assignment and dict.pop are each atomic under the GIL.
        self._key: int | None = next(_STATE.keys)
        _STATE.open[self._key] = aclose

    def _take(self) -> Callable[[], Awaitable[object]] | None:
        key, self._key = self._key, None
        if key is None:
            return None
        return _STATE.open.pop(key, None)

    @property
    def closed(self) -> bool:
        """Whether the close was done or scheduled."""
        return self._key is None

    def close(self) -> None:
        """Close now and wait (a no-op when already closed or scheduled)."""
        aclose = self._take()
        if aclose is not None:
            call(_as_coroutine, aclose)

    def close_soon(self) -> None:
        """Schedule the close and return at once: safe in ``__del__``, in any thread."""
        aclose = self._take()
        if aclose is not None:
            call_soon(_as_coroutine, aclose)


async def _as_coroutine(aclose: Callable[[], Awaitable[object]]) -> None:
    await aclose()


def _at_exit() -> None:
    """Close what is still open, finish scheduled closes, cancel the rest; stop the loop."""
    state = _STATE
    with state.lock:
        loop = state.loop
        state.stopped = True
    remaining = []
    while True:
        try:
            remaining.append(state.open.popitem()[1])  # atomic: a racing close wins or misses
        except KeyError:
            break
    if loop is None or loop.is_closed():
        return
    thread = state.thread

    async def finish() -> None:
        for aclose in remaining:
            future = asyncio.ensure_future(_quietly(_as_coroutine, aclose))
            state.closing.add(future)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_WAIT * 0.6):
                while state.closing:
                    await asyncio.wait(set(state.closing))
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current]
        for task in others:
            task.cancel()
        if others:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_WAIT * 0.3):
                    await asyncio.gather(*others, return_exceptions=True)

    def begin() -> None:
        task = loop.create_task(finish())
        task.add_done_callback(lambda _: loop.stop())

    try:
        loop.call_soon_threadsafe(begin)
    except RuntimeError:
        return
    if thread is not None and thread is not threading.current_thread():
        thread.join(EXIT_WAIT)


def iterate(
    produce: Callable[[Send[T]], Coroutine[Any, Any, R]],
    *,
    window: int = 1,
    cleanup_wait: float = CANCEL_WAIT,
) -> Generator[T, None, R]:
    """Run ``produce(send)`` on the loop and yield, in this thread, every item it sends.

    The producer hands items over in batches through a bounded channel: ``await send(batch)``
    waits while ``window`` batches are sent but not yet taken by this generator, so a slow
    caller holds the producer. What the producer returns becomes the generator's return value;
    errors it raises are re-raised here unchanged. Closing the generator early (``break``,
    ``close()``, Ctrl-C) cancels the producer and waits up to ``cleanup_wait`` seconds for its
    clean-up, so no HTTP response is left open (never waiting on the loop thread itself or
    during interpreter shutdown).

    The producer starts at the generator's first ``next()``.

    Args:
        produce: An async function that awaits ``send(batch)`` for each batch of items.
        window: Batches that may wait in the channel (≥ 1).
        cleanup_wait: Seconds to wait for the producer's clean-up when closed early.

    Returns:
        A generator of the items whose return value is the producer's result.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    return _iterate(produce, window, cleanup_wait)


class _Window:
    """How many batches the producer sent and the caller took; the producer's wake-up.

    The caller takes a batch without waking the loop: it counts it under a lock, and only if
    the producer is waiting for room (the window was full) does it schedule the wake-up on the
    loop. (One ``call_soon_threadsafe`` per batch, as a semaphore release, would write to the
    loop's self-pipe and wake it for every network read of every stream.)
    """

    __slots__ = ("lock", "sent", "taken", "waiter")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0  # written by the producer (loop thread) only
        self.taken = 0  # written by the caller's thread only, under the lock
        self.waiter: asyncio.Future[None] | None = None  # set under the lock, when full

    def took(self, loop: asyncio.AbstractEventLoop) -> None:
        """The caller took one batch (called in the caller's thread)."""
        with self.lock:
            self.taken += 1
            waiter, self.waiter = self.waiter, None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed at exit
                loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _iterate(
    produce: Callable[[Send[T]], Coroutine[Any, Any, R]], window: int, cleanup_wait: float
) -> Generator[T, None, R]:
    channel: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    room = _Window()

    async def pump() -> None:
        loop = asyncio.get_running_loop()

        async def send(batch: Iterable[T]) -> None:
            # ``taken`` only grows: seen below the limit without the lock, there is room.
            while room.sent - room.taken >= window:
                with room.lock:
                    if room.sent - room.taken < window:
                        break
                    waiter: asyncio.Future[None] = loop.create_future()
                    room.waiter = waiter
                await waiter
            room.sent += 1
            channel.put((_ITEMS, batch))

        try:
            channel.put((_DONE, await produce(send)))
        except Exception as exc:
            channel.put((_ERROR, exc))

    job = _submit(pump, ())
    loop = _STATE.get()
    finished = False
    try:
        while True:
            kind, value = channel.get()
            if kind == _ITEMS:
                room.took(loop)
                yield from value
            elif kind == _DONE:
                finished = True
                result: R = value
                return result
            else:
                finished = True
                try:
                    raise value
                finally:
                    del value
    finally:
        if not finished and not job.done:
            job.cancel()
            if _may_wait():
                job.wait(cleanup_wait)
