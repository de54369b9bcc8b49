"""The one retry policy: what is retried, the backoff, Retry-After, the deadline and the log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from nim_async.errors import (
    BadRequestError,
    NIMPredictionError,
    PredictionTimeoutError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
    WeightsDownloadError,
)
from nim_async.http.retry import NO_RETRY, RetryPolicy, parse_retry_after


class FakeTime:
    """A clock that only sleeping advances."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError("http://127.0.0.1:1")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (_unavailable(), True),
        (RateLimitError(429, "slow down"), True),
        (ServerError(502, "bad gateway"), True),
        (ServerError(503, "unavailable"), True),
        (ServerError(504, "gateway timeout"), True),
        (WeightsDownloadError("x", status_code=503), True),
        (ServerError(500, "internal"), False),
        (ServerError(501, "not implemented"), False),
        (BadRequestError(400, "bad"), False),
        (PredictionTimeoutError("slow"), False),
        (StreamError("cut"), False),
        (WeightsDownloadError("x", status_code=None), False),
        (ConnectionError("raw transport error"), False),
        (ValueError("x"), False),
    ],
)
def test_what_is_retried(error: BaseException, retried: bool) -> None:
    assert RetryPolicy().is_retryable(error) is retried


def test_broken_streams_are_retried_only_when_asked() -> None:
    """Only a caller that runs the whole request again (the batch) asks for it."""
    policy = RetryPolicy(broken_streams=True)
    assert policy.is_retryable(StreamError("cut", partial_text="{"))
    assert policy.is_retryable(ServerError(503, "x"))
    assert not policy.is_retryable(PredictionTimeoutError("slow"))
    assert not RetryPolicy().is_retryable(StreamError("cut"))


def test_statuses_are_configurable() -> None:
    policy = RetryPolicy(statuses=frozenset({500}))
    assert policy.is_retryable(ServerError(500, "x"))
    assert not policy.is_retryable(ServerError(503, "x"))
    assert policy.is_retryable(_unavailable())  # connect errors always are


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(base=0.5, cap=3.0)
    low = [policy.delay(n, rand=lambda: 0.0) for n in range(1, 7)]
    high = [policy.delay(n, rand=lambda: 0.999999) for n in range(1, 7)]
    assert low == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5]
    assert high == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0])
    assert policy.delay(10_000, rand=lambda: 0.5) == pytest.approx(2.25)  # no overflow


def test_retry_after_raises_the_wait() -> None:
    policy = RetryPolicy(base=0.2, cap=1.0)
    assert policy.delay(1, retry_after=5.0, rand=lambda: 0.5) == 5.0
    assert policy.delay(3, retry_after=0.01, rand=lambda: 1.0) == pytest.approx(0.8)


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("-1") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 10, 21, 7, 28, 30, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2026, 10, 21, 7, 27, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now=now) == pytest.approx(30.0)


def test_validation() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base=-1)
    with pytest.raises(ValueError, match="cap"):
        RetryPolicy(base=2, cap=1)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=0)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy.from_retries(-1)
    assert RetryPolicy.from_retries(2).attempts == 3
    assert RetryPolicy.from_retries(0, base=0.0).retries == 0
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]
    assert policy.with_changes(attempts=2) == RetryPolicy(attempts=2)
    assert hash(policy) == hash(RetryPolicy())


async def test_run_retries_up_to_attempts_then_raises_the_last_error() -> None:
    fake = FakeTime()
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise ServerError(503, f"busy {calls}")

    policy = RetryPolicy(attempts=4, base=0.1, cap=10.0)
    with pytest.raises(ServerError, match="busy 4"):
        await policy.run(attempt, clock=fake.clock, sleep=fake.sleep, rand=lambda: 0.0)
    assert calls == 4
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.2])


async def test_run_returns_after_a_transient_failure() -> None:
    fake = FakeTime()
    outcomes: list[BaseException | str] = [_unavailable(), RateLimitError(429, "x"), "ok"]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert await RetryPolicy().run(attempt, clock=fake.clock, sleep=fake.sleep) == "ok"
    assert len(fake.sleeps) == 2


async def test_run_does_not_retry_a_non_retryable_error() -> None:
    fake = FakeTime()
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ServerError(500, "boom")

    with pytest.raises(ServerError):
        await RetryPolicy().run(attempt, clock=fake.clock, sleep=fake.sleep)
    assert calls == 1
    assert fake.sleeps == []


async def test_no_retry_policy_makes_one_attempt() -> None:
    fake = FakeTime()
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise _unavailable()

    with pytest.raises(ServiceUnavailableError):
        await NO_RETRY.run(attempt, clock=fake.clock, sleep=fake.sleep)
    assert calls == 1


async def test_retry_after_is_honoured() -> None:
    fake = FakeTime()
    errors = [RateLimitError(429, "x", retry_after=2.5)]

    async def attempt() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    policy = RetryPolicy(base=0.1)
    assert await policy.run(attempt, clock=fake.clock, sleep=fake.sleep) == "ok"
    assert fake.sleeps == [2.5]


async def test_retry_after_beyond_the_deadline_gives_up_without_waiting() -> None:
    fake = FakeTime()
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ServerError(503, "x", retry_after=30.0)

    with pytest.raises(ServerError):
        await RetryPolicy(deadline=10.0).run(attempt, clock=fake.clock, sleep=fake.sleep)
    assert calls == 1
    assert fake.sleeps == []
    # the caller's deadline applies the same way
    with pytest.raises(ServerError):
        await RetryPolicy().run(attempt, deadline=5.0, clock=fake.clock, sleep=fake.sleep)
    assert calls == 2


async def test_retry_after_beyond_max_retry_after_gives_up() -> None:
    fake = FakeTime()

    async def attempt() -> None:
        raise RateLimitError(429, "x", retry_after=3600.0)

    with pytest.raises(RateLimitError):
        await RetryPolicy(max_retry_after=60).run(attempt, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []


async def test_deadline_cuts_off_retries_and_no_wait_passes_it() -> None:
    fake = FakeTime()
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        fake.now += 1.0  # each attempt takes 1 s
        raise _unavailable()

    policy = RetryPolicy(attempts=100, base=1.0, cap=1.0, deadline=5.5)
    start = fake.now
    with pytest.raises(ServiceUnavailableError):
        await policy.run(attempt, clock=fake.clock, sleep=fake.sleep, rand=lambda: 0.999)
    assert fake.now - start <= 5.5 + 1.0  # only the last attempt may run past the deadline
    assert 1 < calls < 100
    assert all(s <= 1.0 for s in fake.sleeps)


async def test_the_earlier_deadline_wins() -> None:
    fake = FakeTime()
    state = RetryPolicy(deadline=10).start(deadline=3, clock=fake.clock, sleep=fake.sleep)
    assert state.remaining() == 3
    state = RetryPolicy(deadline=2).start(deadline=30, clock=fake.clock, sleep=fake.sleep)
    assert state.remaining() == 2
    assert RetryPolicy().start(clock=fake.clock).remaining() is None


async def test_state_counts_attempts_for_hand_written_loops() -> None:
    fake = FakeTime()
    state = RetryPolicy(attempts=3).start(clock=fake.clock, sleep=fake.sleep)
    assert state.attempts == 1
    assert await state.backoff(ServerError(503, "x"))
    assert await state.backoff(ServerError(503, "x"))
    assert state.attempts == 3
    assert not await state.backoff(ServerError(503, "x"))
    assert state.attempts == 3
    assert len(fake.sleeps) == 2


async def test_the_caller_may_judge_the_error_but_not_the_limits() -> None:
    # A resumable download resumes after a timeout, which the policy itself never retries;
    # the attempts still bound it, and retryable=False gives up on a retryable error.
    fake = FakeTime()
    state = RetryPolicy(attempts=2).start(clock=fake.clock, sleep=fake.sleep)
    timeout = PredictionTimeoutError("slow")
    assert not RetryPolicy().is_retryable(timeout)
    assert not await state.backoff(ServerError(503, "x"), retryable=False)
    assert await state.backoff(timeout, retryable=True)
    assert not await state.backoff(timeout, retryable=True)  # attempts spent
    assert state.attempts == 2
    assert len(fake.sleeps) == 1


async def test_each_retry_is_logged_without_the_message(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    secret = "nvapi-SECRET-value"
    errors: list[NIMPredictionError] = [
        ServerError(503, f"upstream said {secret}"),
        ServiceUnavailableError(f"http://user:{secret}@127.0.0.1:1"),
    ]

    async def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    with caplog.at_level(logging.INFO, logger="nim_async"):
        await RetryPolicy().run(
            attempt, clock=fake.clock, sleep=fake.sleep, label="POST /v1/chat/completions"
        )
    records = [r for r in caplog.records if r.name == "nim_async"]
    assert len(records) == 2
    assert all(r.levelno == logging.INFO for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert secret not in text
    assert "POST /v1/chat/completions" in text
    assert "ServerError (HTTP 503)" in text
    assert "attempt 2 of 4" in text
    assert "attempt 3 of 4" in text


def test_library_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("nim_async").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
