"""Timing and faults of the emulator: when tokens go out, and the injected failures.

The timing is a server's: preprocessing (reading the body, fetching and analysing images) comes
first and adds to the time to first token; the first token is due ``ttft_ms`` (plus prefill per
prompt token) after the request got its slot; each later token is due one ITL after the
previous one, and a write late by more than half an ITL moves the schedule instead of releasing
the overdue tokens in one burst.
"""

from __future__ import annotations

import asyncio
import logging
import random

from aiohttp import web

from nim_async.emulator.settings import EmulatorSettings

__all__ = ["TokenPacer", "drop_connection", "first_token_delay", "injected_failure", "sleep_until"]

log = logging.getLogger("nim_async.emulator")

LATE_TOLERANCE = 0.001
"""Seconds a write may always come after its due time before the schedule moves (timer jitter);
the tolerance is half an ITL when that is larger."""


def first_token_delay(settings: EmulatorSettings, prompt_tokens: int) -> float:
    """Seconds from a request's start of generation to its first token.

    Args:
        settings: ``ttft_ms`` and ``prefill_ms_per_1k_tokens``.
        prompt_tokens: Prompt tokens of the request (images included).
    """
    return (settings.ttft_ms + settings.prefill_ms_per_1k_tokens * prompt_tokens / 1000.0) / 1e3


async def sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep until the loop clock reaches ``when`` (at once when it has)."""
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class TokenPacer:
    """Due times of a stream's tokens: the first at ``first_due``, then one ITL after each write.

    A write later than its due time by more than half an ITL (at least
    :data:`LATE_TOLERANCE`) re-anchors the schedule at that write, as a real engine's next
    decode step starts when the previous one ended: tokens never catch up in a burst, and no
    two writes come closer than half an ITL. Smaller lateness (timer jitter) keeps the
    original schedule, so the mean ITL does not drift.

    Args:
        first_due: Loop time the first token is due.
        itl: Inter-token latency in seconds.
    """

    def __init__(self, first_due: float, itl: float) -> None:
        self.next_due = first_due
        self.itl = itl
        self._tolerance = max(LATE_TOLERANCE, itl / 2)
        self.first_written: float | None = None
        self.last_written: float | None = None

    def written(self, at: float) -> None:
        """Record that a token went out at loop time ``at``; schedule the next."""
        if self.first_written is None:
            self.first_written = at
        self.last_written = at
        base = at if at - self.next_due > self._tolerance else self.next_due
        self.next_due = base + self.itl


def injected_failure(settings: EmulatorSettings, rng: random.Random) -> bool:
    """Whether this request fails by fault injection (``fail_rate``)."""
    return settings.fail_rate > 0 and rng.random() < settings.fail_rate


def drop_connection(request: web.Request, after: int) -> None:
    """Close the client connection (fault injection: ``disconnect_after``)."""
    log.warning("emulator: dropping the connection after %d tokens (fault injection)", after)
    transport = request.transport
    if transport is not None:
        transport.close()
