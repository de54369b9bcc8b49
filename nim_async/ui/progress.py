"""One rich progress display for everything that moves: image layers, weight downloads, batches.

:class:`ProgressDisplay` keeps named rows (a layer id, a download label, a batch) on a rich
``Progress``; the columns are chosen once per display (:func:`byte_columns` for transfers, or
any rich columns). Rows are addressed by key, so callers never hold rich task ids::

    with ProgressDisplay(console, byte_columns()) as display:
        display.update("layer 0f61", completed=1024, total=4096, phase="Downloading")
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["ProgressDisplay", "byte_columns"]


def byte_columns(*, eta: bool = False) -> list[ProgressColumn | str]:
    """Columns for byte transfers: label, bar, bytes, speed, then ETA or the phase.

    Args:
        eta: Show the time remaining instead of the ``phase`` field.
    """
    tail: ProgressColumn = TimeRemainingColumn() if eta else TextColumn("{task.fields[phase]}")
    return [
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        DownloadColumn(),
        TransferSpeedColumn(),
        tail,
    ]


class ProgressDisplay:
    """A live set of progress rows addressed by key.

    Args:
        console: Where to draw.
        columns: The rich columns of every row; a row's extra fields (``phase`` for
            :func:`byte_columns`) are given to :meth:`update`.
        defaults: Values of the extra fields for a new row.
        disable: Draw nothing (the calls still track the rows).
        transient: Remove the bars when the display stops.
    """

    def __init__(
        self,
        console: Console,
        columns: Sequence[ProgressColumn | str],
        *,
        defaults: dict[str, Any] | None = None,
        disable: bool = False,
        transient: bool = False,
    ) -> None:
        self.console = console
        self._defaults = {"phase": ""} | (defaults or {})
        self._progress = Progress(*columns, console=console, disable=disable, transient=transient)
        self._rows: dict[str, TaskID] = {}

    @property
    def keys(self) -> list[str]:
        """The rows' keys, in the order they were added."""
        return list(self._rows)

    def start(self) -> None:
        """Begin drawing."""
        self._progress.start()

    def stop(self) -> None:
        """Stop drawing (the last state stays on screen unless ``transient``)."""
        self._progress.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _row(self, key: str, description: str | None, total: float | None) -> TaskID:
        row = self._rows.get(key)
        if row is None:
            row = self._progress.add_task(description or key, total=total, **self._defaults)
            self._rows[key] = row
        return row

    def update(
        self,
        key: str,
        *,
        description: str | None = None,
        completed: float | None = None,
        total: float | None = None,
        advance: float | None = None,
        restart: bool = False,
        **fields: Any,
    ) -> None:
        """Create or move the row ``key``.

        Args:
            key: The row (created on first use).
            description: Its label (default: ``key``); changes it when given.
            completed: Amount done; ``None`` leaves it.
            total: Amount in all; ``None`` leaves it.
            advance: Add this to the amount done.
            restart: Start the row again from zero with ``total`` (a new phase).
            **fields: Values of the columns' extra fields (``phase=...``).
        """
        row = self._row(key, description, total)
        if restart:
            self._progress.reset(row, total=total, **fields)
        self._progress.update(
            row,
            description=description,
            completed=completed,
            total=total,
            advance=advance,
            **fields,
        )

    def total_of(self, key: str) -> float | None:
        """The ``total`` of row ``key`` (``None`` if unknown or no such row)."""
        row = self._rows.get(key)
        if row is None:
            return None
        return self._progress.tasks[row].total
