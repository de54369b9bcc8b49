"""The loop thread of the blocking facade: bounded hand-over, cancellation, closes, misuse."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nim_async.sync import _portal
from nim_async.sync._portal import Closer, Send


def test_iterate_holds_the_producer_while_the_caller_does_not_take() -> None:
    sent = 0

    async def produce(send: Send[int]) -> None:
        nonlocal sent
        while True:
            sent += 1
            await send((sent,))

    gen = _portal.iterate(produce, window=2)
    taken = [next(gen) for _ in range(3)]
    time.sleep(0.3)  # a slow caller: an unbounded channel would fill meanwhile
    assert taken == [1, 2, 3]
    assert sent <= len(taken) + 2 + 1  # the window, plus the one waiting in send()
    gen.close()


def test_iterate_returns_the_producer_result_and_reraises_its_error() -> None:
    async def produce(send: Send[str]) -> str:
        await send(["a", "b"])
        await send(["c"])
        return "final"

    gen = _portal.iterate(produce)
    items = [next(gen), next(gen), next(gen)]
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert items == ["a", "b", "c"]
    assert stop.value.value == "final"

    class Boom(Exception):
        pass

    async def failing(send: Send[int]) -> None:
        await send([1])
        raise Boom("x")

    gen2 = _portal.iterate(failing)
    assert next(gen2) == 1
    with pytest.raises(Boom):
        next(gen2)


def test_closing_early_cancels_the_producer_and_waits_for_its_cleanup() -> None:
    cleaned = threading.Event()

    async def produce(send: Send[int]) -> None:
        try:
            n = 0
            while True:
                n += 1
                await send([n])
        finally:
            await asyncio.sleep(0.05)  # clean-up that takes a moment (closing a response)
            cleaned.set()

    gen = _portal.iterate(produce)
    assert next(gen) == 1
    gen.close()
    assert cleaned.is_set()


def test_call_crosses_results_and_errors() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    async def fail() -> None:
        raise KeyError("k")

    assert _portal.call(add, 2, 3) == 5
    with pytest.raises(KeyError):
        _portal.call(fail)


def test_a_blocking_call_on_the_loop_thread_is_refused() -> None:
    async def noop() -> None:
        return None

    async def nested() -> str:
        try:
            _portal.call(noop)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "own event-loop thread" in _portal.call(nested)


def test_closer_closes_once_now_or_soon() -> None:
    closes: list[str] = []
    done = threading.Event()

    async def aclose_now() -> None:
        closes.append("now")

    release = threading.Event()

    async def aclose_soon() -> None:
        await asyncio.to_thread(release.wait)
        closes.append("soon")
        done.set()

    now = Closer(aclose_now)
    assert not now.closed
    now.close()
    now.close()
    now.close_soon()
    assert now.closed
    assert closes == ["now"]

    soon = Closer(aclose_soon)
    soon.close_soon()  # what __del__ does: schedule, never wait
    assert soon.closed
    assert closes == ["now"]  # returned although the close cannot have finished
    release.set()
    assert done.wait(10)
    assert closes == ["now", "soon"]


def test_window_must_be_positive() -> None:
    async def produce(send: Send[int]) -> None:
        return None

    with pytest.raises(ValueError, match="window"):
        _portal.iterate(produce, window=0)
