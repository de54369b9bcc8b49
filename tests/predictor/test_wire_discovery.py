"""dialect="auto": many first calls at once wait for one answer together (issue 15).

Before, the calls that came while the server was being asked queued on a lock and went
through it one per event-loop iteration: with 256 first streams that took seconds, and the
benchmark's warm-up did not finish. Counted in loop iterations here, never in seconds.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from nim_async.errors import ServiceUnavailableError
from nim_async.predict.predictor import AsyncNIMPredictor

from .conftest import MODEL


async def test_waiting_first_calls_get_the_answer_together(emulator: Any) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    done_at: list[int] = []

    async def ask(p: AsyncNIMPredictor) -> object:
        wire = await p.wire_format()
        done_at.append(ticks)
        return wire

    async with AsyncNIMPredictor(MODEL, "vqa", port=emulator.port, dialect="auto") as p:
        tick = asyncio.ensure_future(ticker())
        try:
            wires = await asyncio.gather(*(ask(p) for _ in range(200)))
        finally:
            tick.cancel()
    assert all(w is wires[0] for w in wires)
    # one lock hand-over per iteration would spread them over >= 199 iterations
    assert max(done_at) - min(done_at) <= 3


async def test_when_the_ask_fails_every_waiting_call_fails_and_asks_again_later() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with AsyncNIMPredictor(MODEL, "vqa", port=port, dialect="auto", retries=0) as p:
        results = await asyncio.gather(*(p.wire_format() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
        assert p._wire_asked is None  # nothing left pending: the next call asks afresh
        with pytest.raises(ServiceUnavailableError):
            await p.wire_format()
