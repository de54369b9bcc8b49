"""The one retry policy of ``nim_async``: what is retried, how long to wait, when to give up.

A :class:`RetryPolicy` is a small immutable value. It works on ``nim_async`` errors only (never
on a transport's exception types), so the predictor, the batch, the weights download and the
readiness poll can share it whatever transport they use:

* **retried**: no server answering (:class:`~nim_async.errors.ServiceUnavailableError`: connect
  errors, a connection that broke before any answer), and HTTP ``429``, ``502``, ``503`` and
  ``504`` carried in the error's ``status_code`` (``ServerError``, ``RateLimitError``,
  ``WeightsDownloadError``, ...). 502 and 504 are gateway errors (a proxy in front of a
  restarting or overloaded server) that a later attempt can fix; 429 and 503 are the server
  asking to come back later. ``500`` and every other status are *not* retried: an internal error
  is usually deterministic for the same request, and resending it only multiplies the load.
  Timeouts are not retried either: the caller's timeout is its bound on waiting.
* **backoff**: exponential with "equal jitter": after the *n*-th failed attempt the wait is
  uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))``.
* **Retry-After**: a server's ``Retry-After`` (seconds or an HTTP date, see
  :func:`parse_retry_after`, stored on the error as ``retry_after``) raises the wait to at least
  that long. A wait never goes past the deadline: when the next attempt could only start after
  it (or after ``max_retry_after``), the policy gives up and the last error is raised.
* **limits**: ``attempts`` (total sends, the first included) and an optional total ``deadline``
  in seconds from the first attempt.

Every retry is logged at INFO on the ``nim_async`` logger (error type and status only: never a
message body, header or URL query that could carry a secret). The module never prints; it adds a
:class:`logging.NullHandler` so an application without logging set up sees nothing on stderr.

Use :meth:`RetryPolicy.run` for a coroutine function, or :meth:`RetryPolicy.start` for a loop::

    retry = policy.start()
    while True:
        try:
            return await send()
        except NIMError as exc:
            if not await retry.backoff(exc):
                raise
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from nim_async.errors import NIMError, ServiceUnavailableError, StreamError

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "NO_RETRY",
    "RetryPolicy",
    "RetryState",
    "parse_retry_after",
]

T = TypeVar("T")

logger = logging.getLogger("nim_async")
logger.addHandler(logging.NullHandler())

#: HTTP statuses worth another attempt: rate limited, bad gateway, unavailable, gateway timeout.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})

Sleep = Callable[[float], Awaitable[object]]
Clock = Callable[[], float]
Rand = Callable[[], float]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait according to an HTTP ``Retry-After`` header value.

    Args:
        value: The header value: delay seconds (``"120"``, ``"1.5"``) or an HTTP date
            (``"Wed, 21 Oct 2026 07:28:00 GMT"``).
        now: The current wall-clock time (``time.time()`` when ``None``), for HTTP dates.

    Returns:
        The delay in seconds (``0.0`` for a date in the past), or ``None`` when the value is
        missing or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as UTC
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often to resend a failed request.

    Args:
        attempts: Total sends of one request, the first included (``1`` disables retrying).
        deadline: Seconds from the first attempt after which no retry starts and no wait
            extends (``None``: only ``attempts`` limits).
        base: Seconds of the first backoff (before jitter).
        cap: Longest backoff in seconds (before a ``Retry-After`` raises it).
        max_retry_after: Longest ``Retry-After`` honoured; a server asking for more makes the
            policy give up instead of waiting that long or retrying early.
        statuses: HTTP statuses that are retried (see the module docstring).
        broken_streams: Also retry an attempt whose stream broke after it had started
            (:class:`~nim_async.errors.StreamError`). Only a caller that runs the whole
            request again can (the batch); the predictor has handed tokens out by then.

    Raises:
        ValueError: if ``attempts`` < 1, a duration is negative, ``cap`` < ``base`` or
            ``deadline`` is not positive.
    """

    attempts: int = 4
    deadline: float | None = None
    base: float = 0.2
    cap: float = 8.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)
    broken_streams: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.base < 0 or self.cap < 0 or self.max_retry_after < 0:
            raise ValueError("base, cap and max_retry_after must not be negative")
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must not be below base ({self.base})")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be positive, got {self.deadline}")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    @classmethod
    def from_retries(cls, retries: int, **changes: object) -> RetryPolicy:
        """The policy with ``retries`` extra attempts (``attempts = retries + 1``).

        Args:
            retries: Retries after the first attempt (``0`` disables retrying).
            **changes: Other fields, as for the constructor.

        Raises:
            ValueError: if ``retries`` < 0.
        """
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        return replace(cls(), attempts=retries + 1, **changes)  # type: ignore[arg-type]

    @property
    def retries(self) -> int:
        """Retries after the first attempt (``attempts - 1``)."""
        return self.attempts - 1

    def with_changes(self, **changes: object) -> RetryPolicy:
        """A copy with some fields changed (``policy.with_changes(attempts=1)``).

        Args:
            **changes: Fields to change, as for the constructor.
        """
        return replace(self, **changes)  # type: ignore[arg-type]

    def is_retryable_status(self, status: int) -> bool:
        """Whether an HTTP answer with ``status`` is worth another attempt.

        Args:
            status: The HTTP status code.
        """
        return status in self.statuses

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy.

        Args:
            error: The exception an attempt raised. Only ``nim_async`` errors are considered:
                :class:`~nim_async.errors.ServiceUnavailableError` (no server answering) and
                errors whose ``status_code`` is in :attr:`statuses`.
        """
        if not isinstance(error, NIMError):
            return False
        if isinstance(error, ServiceUnavailableError):
            return True
        if isinstance(error, StreamError):
            return self.broken_streams
        status = getattr(error, "status_code", None)
        return isinstance(status, int) and status in self.statuses

    def delay(
        self,
        failures: int,
        *,
        retry_after: float | None = None,
        rand: Rand = random.random,
    ) -> float:
        """The wait before the next attempt, after ``failures`` failed attempts.

        Args:
            failures: Failed attempts so far (``1`` after the first).
            retry_after: The server's ``Retry-After`` in seconds, if any: the wait is at least
                that long.
            rand: Source of uniform numbers in ``[0, 1)`` (injectable for tests).

        Returns:
            Seconds, uniform in ``[d/2, d]`` with ``d = min(cap, base * 2**(failures-1))``,
            raised to ``retry_after``. The deadline is not applied here (see
            :meth:`RetryState.next_delay`).
        """
        exponent = max(0, failures - 1)
        ceiling = self.cap if exponent >= 64 else min(self.cap, self.base * (2.0**exponent))
        wait = ceiling / 2 + rand() * ceiling / 2
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        return wait

    def start(
        self,
        *,
        deadline: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Rand = random.random,
        label: str = "request",
    ) -> RetryState:
        """Begin one operation under this policy (the first attempt starts now).

        Args:
            deadline: The caller's own limit in seconds from now; the earlier of it and the
                policy's ``deadline`` applies.
            clock: Monotonic clock in seconds (injectable for tests).
            sleep: Async sleep (injectable for tests).
            rand: Uniform ``[0, 1)`` source for the jitter (injectable for tests).
            label: What is retried, for the log (``"POST /v1/chat/completions"``); never put a
                secret in it.
        """
        limits = [d for d in (self.deadline, deadline) if d is not None]
        return RetryState(
            self, min(limits) if limits else None, clock=clock, sleep=sleep, rand=rand, label=label
        )

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Rand = random.random,
        label: str = "request",
    ) -> T:
        """Await ``fn()`` until it succeeds, or the policy gives up and its last error is raised.

        Args:
            fn: Makes one attempt (called again for each retry).
            deadline: The caller's own limit in seconds (see :meth:`start`).
            clock: Monotonic clock (injectable for tests).
            sleep: Async sleep (injectable for tests).
            rand: Jitter source (injectable for tests).
            label: What is retried, for the log.

        Returns:
            What ``fn`` returned.

        Raises:
            Exception: the last attempt's error when it is not retryable or the limits are spent.
        """
        state = self.start(deadline=deadline, clock=clock, sleep=sleep, rand=rand, label=label)
        while True:
            try:
                return await fn()
            except Exception as exc:
                if not await state.backoff(exc):
                    raise


class RetryState:
    """The retry bookkeeping of one operation (made by :meth:`RetryPolicy.start`).

    Attributes:
        policy: The policy applied.
        attempts: Attempts made so far, counting the one running now (starts at 1).
    """

    __slots__ = ("_clock", "_deadline_at", "_label", "_rand", "_sleep", "attempts", "policy")

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None,
        *,
        clock: Clock,
        sleep: Sleep,
        rand: Rand,
        label: str,
    ) -> None:
        self.policy = policy
        self.attempts = 1
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._label = label
        self._deadline_at = None if deadline is None else clock() + deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None`` without one; never negative)."""
        if self._deadline_at is None:
            return None
        return max(0.0, self._deadline_at - self._clock())

    def next_delay(self, error: BaseException, *, retryable: bool | None = None) -> float | None:
        """The wait before retrying after ``error``, or ``None`` to give up.

        Gives up when the error is not retryable, the attempts are spent, the server's
        ``Retry-After`` exceeds ``max_retry_after``, or the wait would end past the deadline.

        Args:
            error: The exception the current attempt raised (its ``retry_after`` attribute, when
                a number, is the server's ``Retry-After``).
            retryable: The caller's own judgement of the error's kind, instead of
                :meth:`RetryPolicy.is_retryable` (a resumable download resumes after any broken
                transfer); the attempts, the deadline and the backoff still apply.
        """
        policy = self.policy
        if retryable is None:
            retryable = policy.is_retryable(error)
        if self.attempts >= policy.attempts or not retryable:
            return None
        retry_after = getattr(error, "retry_after", None)
        if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
            retry_after = None
        if retry_after is not None and retry_after > policy.max_retry_after:
            return None
        wait = policy.delay(self.attempts, retry_after=retry_after, rand=self._rand)
        remaining = self.remaining()
        if remaining is not None and wait >= remaining:
            return None
        return wait

    async def backoff(self, error: BaseException, *, retryable: bool | None = None) -> bool:
        """Log and sleep before the next attempt; ``False`` (no sleep) means give up.

        Args:
            error: The exception the current attempt raised.
            retryable: Overrides the policy's judgement of the error (see :meth:`next_delay`).

        Returns:
            ``True`` when the caller should make another attempt (``attempts`` was incremented).
        """
        wait = self.next_delay(error, retryable=retryable)
        if wait is None:
            return False
        status = getattr(error, "status_code", None)
        reason = type(error).__name__ + (f" (HTTP {status})" if isinstance(status, int) else "")
        logger.info(
            "retrying %s after %s: attempt %d of %d in %.2f s",
            self._label,
            reason,
            self.attempts + 1,
            self.policy.attempts,
            wait,
        )
        await self._sleep(wait)
        self.attempts += 1
        return True


#: A policy that never retries (one attempt).
NO_RETRY = RetryPolicy(attempts=1)
