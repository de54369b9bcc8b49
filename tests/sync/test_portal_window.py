"""The hand-over window of _portal.iterate: the caller takes batches without waking the loop
each time; the producer waits only when the window is full and is woken when room is made."""

from __future__ import annotations

import asyncio
import threading
import time

from nim_async.sync import _portal
from nim_async.sync._portal import Send


def test_a_full_window_holds_the_producer_until_the_caller_takes() -> None:
    untaken: list[int] = []  # batches sent and not yet taken, seen by the producer
    sent = 0

    async def produce(send: Send[int]) -> str:
        nonlocal sent
        for i in range(2000):
            await send((i,))
            sent += 1
            untaken.append(sent - taken)
        return "done"

    taken = 0
    gen = _portal.iterate(produce, window=3)
    items = []
    try:
        while True:
            items.append(next(gen))
            taken += 1
            if taken % 500 == 0:
                time.sleep(0.05)  # a slow moment: the producer must wait, then resume
    except StopIteration as stop:
        assert stop.value == "done"
    assert items == list(range(2000))
    assert max(untaken) <= 3 + 1  # the window (plus the batch being taken)


def test_closing_while_the_producer_waits_for_room_cancels_it() -> None:
    waiting = threading.Event()
    cleaned = threading.Event()

    async def produce(send: Send[int]) -> None:
        try:
            i = 0
            while True:
                i += 1
                if i > 2:
                    waiting.set()  # the window (1) is full from here on
                await send([i])
        finally:
            await asyncio.sleep(0.01)
            cleaned.set()

    gen = _portal.iterate(produce, window=1)
    assert next(gen) == 1
    assert waiting.wait(10)
    gen.close()
    assert cleaned.is_set()
