"""``nim-async ps``: the NIM containers nim-async manages, as a table or JSON.

Replicas of one deployment (``nim-async deploy --replicas N``) are listed together, in replica
order. On a terminal: a rich table where a deployment of several replicas has a row of its own
(``3/3 running``, its port range) with its replicas indented under it. Piped or redirected
(stdout not a terminal): one header line and one line per container, tab-separated full
values, never cut to a width, with ``deployment`` and ``replica`` columns (``--json`` for
machines that want structure: the same rows as objects).
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

    listed = [_as_dict(c) for c in await AsyncNIMDeployer.list(**kubernetes_options(args))]
    groups = _grouped(listed)
    containers = [row for group in groups for row in group]
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
    if not sys.stdout.isatty():
        rows = [[_cell(row.get(column)) for column in columns] for row in containers]
        lines = [columns, *rows]
        sys.stdout.write("".join("\t".join(_plain(c) for c in line) + "\n" for line in lines))
        return EXIT_OK
    shown = [c for c in columns if c not in _GROUPING]
    draw_table(out, "NIM containers", shown, _table_rows(groups, shown), no_wrap=("name",))
    return EXIT_OK


_GROUPING = ("deployment", "replica")


def _grouped(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by deployment (first seen first), each group in replica order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = str(row.get("deployment") or row.get("name") or "")
        groups.setdefault(key, []).append(row)
    return [sorted(group, key=lambda r: int(r.get("replica") or 0)) for group in groups.values()]


def _table_rows(groups: list[list[dict[str, Any]]], columns: list[str]) -> list[list[str]]:
    """A row per container; a deployment of several gets a summary row with them under it."""
    rows: list[list[str]] = []
    for group in groups:
        if len(group) == 1:
            rows.append([_cell(group[0].get(column)) for column in columns])
            continue
        rows.append([_cell(_summary(group).get(column)) for column in columns])
        for i, member in enumerate(group):
            branch = "└" if i == len(group) - 1 else "├"
            cells = {**member, "name": f"  {branch} {member.get('name', '')}"}
            rows.append([_cell(cells.get(column)) for column in columns])
    return rows


def _summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The deployment row of a group of replicas: its name, state count, port range."""
    first = group[0]
    running = sum(1 for row in group if row.get("state") == "running")
    ports = sorted(int(row["port"]) for row in group if row.get("port") is not None)
    summary: dict[str, Any] = {
        "name": f"{first.get('deployment') or first.get('name')} ({len(group)} replicas)",
        "state": f"{running}/{len(group)} running",
        "port": f"{ports[0]}-{ports[-1]}" if len(ports) > 1 else (ports[0] if ports else None),
    }
    for key in ("image", "host", "served_model_name", "config_hash"):
        values = {str(row.get(key)) for row in group}
        if len(values) == 1:
            summary[key] = first.get(key)
    return summary


def _plain(cell: str) -> str:
    """A cell on one tab-separated line: tabs and line breaks become spaces."""
    return " ".join(cell.split()) if any(c in cell for c in "\t\n\r") else cell
