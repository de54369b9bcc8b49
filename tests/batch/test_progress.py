"""Batch progress goes through a plain BatchProgress object; the rich bar lives in nim_async.ui."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from nim_async.predict.batch import predict_many
from nim_async.ui.batch_progress import RichBatchProgress


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, total: int | None) -> None:
        self.events.append(("start", total))

    def advance(self, ok: bool) -> None:
        self.events.append(("advance", ok))

    def finish(self) -> None:
        self.events.append(("finish", None))


async def test_a_batch_reports_to_its_progress_object(
    on_emulator: Any, shapes: list[bytes]
) -> None:
    recorder = Recorder()
    async with on_emulator(fail_rate=1.0, fail_status=500) as (_emu, predictor):
        results = [r async for r in predict_many(predictor, shapes[:3], progress=recorder)]
    assert len(results) == 3
    assert recorder.events == [
        ("start", 3),
        ("advance", False),
        ("advance", False),
        ("advance", False),
        ("finish", None),
    ]


def test_rich_bar_draws_done_total_and_failed() -> None:
    out = io.StringIO()
    bar = RichBatchProgress(console=Console(file=out, width=120, force_terminal=False))
    bar.start(3)
    bar.advance(True)
    bar.advance(False)
    bar.advance(True)
    bar.finish()
    text = out.getvalue()
    assert "3/3" in text
    assert "1 failed" in text
