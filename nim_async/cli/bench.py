"""``nim-async bench``: the load-test suite of :mod:`nim_async.bench`, drawn with rich.

Its options belong to :func:`nim_async.bench.cli.add_arguments`; everything after ``bench`` goes
there. (``python -m nim_async.bench`` runs the same suite with plain-text output.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from nim_async.bench import cli as bench_cli
from nim_async.bench.report import (
    CLIENT_BOUND,
    ENDPOINT_COLUMNS,
    TABLE_COLUMNS,
    WORKER_COLUMNS,
    endpoint_rows,
    table_notes,
    table_rows,
    worker_rows,
)
from nim_async.ui.table import draw_table

__all__ = ["RichBenchOutput", "main"]

_STYLES = {"warning": "yellow", "error": "red"}


class RichBenchOutput:
    """The suite's progress lines and results table on a rich console.

    Args:
        console: Where to draw; default: stdout, with a fixed width of 170 columns when piped
            (CI logs) so the table is not squeezed into 80.
    """

    def __init__(self, console: Console | None = None) -> None:
        if console is None:
            console = Console() if sys.stdout.isatty() else Console(width=170)
        self.console = console

    def line(self, text: str, level: str = "info") -> None:
        """Print one line, coloured by ``level``."""
        style = _STYLES.get(level)
        self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))

    def table(self, points: Sequence[dict[str, Any]]) -> None:
        """Draw the results table, the endpoints' (several ``--url``), the workers' and notes."""
        rows = table_rows(points)
        marks = {CLIENT_BOUND: "red"}
        draw_table(
            self.console, "nim-async bench", TABLE_COLUMNS, rows, justify="right", marks=marks
        )
        endpoints = endpoint_rows(points)
        if endpoints:
            draw_table(
                self.console,
                "endpoints (one service)",
                ENDPOINT_COLUMNS,
                endpoints,
                justify="right",
            )
        workers = worker_rows(points)
        if workers:
            draw_table(
                self.console,
                "workers (each one's self-check)",
                WORKER_COLUMNS,
                workers,
                justify="right",
                marks=marks,
            )
        for level, text in table_notes(points, worker_lines=not workers):
            self.line(text, level)


def main(argv: list[str]) -> int:
    """Run ``nim-async bench ARGS...``.

    Args:
        argv: The arguments after ``bench``.

    Returns:
        The suite's exit status.
    """
    return int(bench_cli.main(argv, output=RichBenchOutput()))
