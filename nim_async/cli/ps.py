"""``nim-async ps``: the NIM containers nim-async manages, as a table or JSON.

On a terminal: a rich table. Piped or redirected (stdout not a terminal): one header line and
one line per container, tab-separated full values, never cut to a width (``--json`` for
machines that want structure).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import orjson

from nim_async.cli.common import console
from nim_async.cli.parser import EXIT_OK
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.ui.table import draw_table

__all__ = ["ps"]


def _as_dict(item: object) -> dict[str, Any]:
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        data = dump(mode="json")
        if isinstance(data, dict):
            return data
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    if isinstance(item, dict):
        return dict(item)
    return {"container": str(item)}


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


async def ps(args: argparse.Namespace) -> int:
    """Run ``nim-async ps``.

    Args:
        args: Parsed arguments (``--json``).

    Returns:
        The exit status.
    """
    from nim_async.cli.deploy import kubernetes_options

    containers = [_as_dict(c) for c in await AsyncNIMDeployer.list(**kubernetes_options(args))]
    if args.json:
        sys.stdout.write(orjson.dumps(containers, default=str).decode() + "\n")
        return EXIT_OK
    out = console()
    if not containers:
        out.print("No NIM containers managed by nim-async.")
        return EXIT_OK
    columns: list[str] = []
    for row in containers:
        for key in row:
            if key not in columns:
                columns.append(key)
    rows = [[_cell(row.get(column)) for column in columns] for row in containers]
    if not sys.stdout.isatty():
        lines = [columns, *rows]
        sys.stdout.write("".join("\t".join(_plain(c) for c in line) + "\n" for line in lines))
        return EXIT_OK
    draw_table(out, "NIM containers", columns, rows)
    return EXIT_OK


def _plain(cell: str) -> str:
    """A cell on one tab-separated line: tabs and line breaks become spaces."""
    return " ".join(cell.split()) if any(c in cell for c in "\t\n\r") else cell
