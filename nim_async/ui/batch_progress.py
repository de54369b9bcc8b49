"""A rich progress bar for batches: done / total, failed, rate, ETA (on stderr).

It implements :class:`nim_async.predict.batch.BatchProgress`; pass it as ``progress=`` to
``predict_many`` (the blocking facade does so for ``progress=True``).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nim_async.ui.progress import ProgressDisplay

__all__ = ["RichBatchProgress"]

_ROW = "batch"


class RichBatchProgress:
    """A rich progress bar for one batch (a row of :class:`~nim_async.ui.progress.ProgressDisplay`).

    Args:
        description: The bar's label.
        console: Where to draw (default: a console on stderr).
    """

    def __init__(self, description: str = "scoring", *, console: Console | None = None) -> None:
        self._description = description
        self._display = ProgressDisplay(
            console or Console(stderr=True),
            [
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("[red]{task.fields[failed]} failed"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            ],
            defaults={"failed": 0, "rate": ""},
        )
        self._started = False
        self._start = 0.0
        self._done = 0
        self._failed = 0

    def start(self, total: int | None) -> None:
        """Show the bar (``total`` inputs when known)."""
        self._display.update(_ROW, description=self._description, total=total)
        self._start = time.perf_counter()
        self._started = True
        self._display.start()

    def advance(self, ok: bool) -> None:
        """Count one finished input."""
        if not self._started:
            return
        self._done += 1
        self._failed += not ok
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._display.update(
            _ROW, advance=1, failed=self._failed, rate=f"{self._done / elapsed:.1f}/s"
        )

    def finish(self) -> None:
        """Draw the final state and stop refreshing."""
        self._display.stop()
