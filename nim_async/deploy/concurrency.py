"""Running a deploy's steps together: all succeed, or the first failure cancels the rest.

A replica set is created, started, waited for and removed one task per replica. Each helper
here waits for every task it cancels, shielded from an outer cancellation, so no task outlives
the call that started it (a half-created container is then never left unnoticed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import anyio

__all__ = ["all_or_nothing", "cancel_and_wait"]

_T = TypeVar("_T")


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished, shielded from outer cancellation.

    Their results and exceptions are discarded.

    Args:
        tasks: The tasks (done ones are left as they are).
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.gather(*pending, return_exceptions=True)


async def all_or_nothing(steps: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``steps`` concurrently; the first to fail cancels the others (and waits for them).

    Args:
        steps: The coroutines (or futures) to run; none gives ``[]``.

    Returns:
        Their results, in order.

    Raises:
        BaseException: The first failure (the lowest index among those failed together);
            a cancellation from outside cancels every step before it propagates.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]
    if not tasks:  # asyncio.wait refuses an empty set
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        await cancel_and_wait(tasks)
        raise
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        await cancel_and_wait(tasks)
        error = failed[0].exception()
        assert error is not None
        raise error
    return [task.result() for task in tasks]
