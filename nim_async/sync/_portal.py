"""The one process-wide event-loop thread behind the blocking facade.

Every facade object (``NIMPredictor``, ``NIMDeployer``) holds a :class:`PortalLease` for its
lifetime. The first lease starts an anyio blocking portal (an event loop in its own thread);
the last one to close stops it. Because the loop runs in its own thread, the facade works
from plain scripts and from inside a running event loop (Jupyter, ``asyncio.run``) alike.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, BlockingPortalProvider

__all__ = ["PortalLease", "call_blocking"]

T = TypeVar("T")
R = TypeVar("R")

Emit = Callable[[Iterable[T]], None]
"""Hands a batch of items from the loop thread to the caller's thread."""

_ITEMS, _DONE, _ERROR = 0, 1, 2
_CANCEL_WAIT = 10.0

_PROVIDER = BlockingPortalProvider(backend="asyncio")


class PortalLease:
    """A lease on the shared portal; :meth:`release` gives it back (idempotent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = _PROVIDER.__enter__()

    @property
    def portal(self) -> BlockingPortal:
        """The shared portal.

        Raises:
            RuntimeError: if the lease was released (the facade object was closed).
        """
        portal = self._portal
        if portal is None:
            raise RuntimeError("this object is closed; create a new one")
        return portal

    @property
    def closed(self) -> bool:
        """Whether the lease was released."""
        return self._portal is None

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the portal's loop and block until it finishes.

        Ctrl-C (``KeyboardInterrupt``) while waiting cancels the task on the loop and is
        re-raised. Exceptions raised by ``fn`` cross unchanged.
        """
        return call_blocking(self.portal, fn, *args)

    def iterate(self, produce: Callable[[Emit[T]], Awaitable[R]]) -> Generator[T, None, R]:
        """Run ``produce(emit)`` on the loop and yield, in this thread, every item it emits.

        The producer hands items over in batches (one queue hop per batch, not per item), and
        what it returns becomes the generator's return value. Errors it raises are re-raised
        here unchanged. Closing the generator early (``break``, ``close()``, Ctrl-C) cancels
        the producer and waits for its clean-up, so no HTTP response is left open.

        Args:
            produce: An async function that calls ``emit(batch)`` for each batch of items.

        Returns:
            A generator of the items whose return value is the producer's result.
        """
        portal = self.portal
        channel: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        finished = threading.Event()

        def emit(batch: Iterable[T]) -> None:
            channel.put((_ITEMS, batch))

        async def pump() -> None:
            try:
                channel.put((_DONE, await produce(emit)))
            except Exception as exc:
                channel.put((_ERROR, exc))
            finally:
                finished.set()

        future = portal.start_task_soon(pump)
        try:
            while True:
                kind, value = channel.get()
                if kind == _ITEMS:
                    yield from value
                elif kind == _DONE:
                    result: R = value
                    return result
                else:
                    raise value
        finally:
            if not finished.is_set():
                future.cancel()
                finished.wait(_CANCEL_WAIT)

    def release(self) -> None:
        """Give the lease back; the last lease stops the loop thread."""
        with self._lock:
            if self._portal is None:
                return
            self._portal = None
        _PROVIDER.__exit__(None, None, None)


def call_blocking(portal: BlockingPortal, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` on ``portal`` and wait for it, cancelling it on Ctrl-C.

    Args:
        portal: A running blocking portal.
        fn: An async function.
        *args: Its positional arguments.

    Returns:
        What ``fn`` returned.
    """
    future = portal.start_task_soon(fn, *args)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise
