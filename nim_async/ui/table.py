"""Tables of text cells on a rich console (``nim-async ps``, ``nim-async bench``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["draw_table"]


def draw_table(
    console: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    justify: Literal["left", "right"] = "left",
    marks: Mapping[str, str] | None = None,
    no_wrap: Collection[str] = (),
) -> None:
    """Print ``rows`` under ``columns`` as one rich table.

    Cells are plain text (never read as markup).

    Args:
        console: Where to draw.
        title: The table's title.
        columns: Column headings.
        rows: Text cells, one sequence per row.
        justify: Alignment of every column.
        marks: Words to colour wherever a cell contains them (``{"CLIENT-BOUND": "red"}``).
        no_wrap: Columns whose cells stay on one line (the others give way first).
    """
    table = Table(title=title, header_style="bold")
    for name in columns:
        table.add_column(name, justify=justify, no_wrap=name in no_wrap)
    for row in rows:
        cells = [escape(cell) for cell in row]
        for word, style in (marks or {}).items():
            cells = [cell.replace(word, f"[{style}]{word}[/]") for cell in cells]
        table.add_row(*cells)
    console.print(table)
