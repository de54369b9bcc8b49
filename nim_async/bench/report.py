"""Outputs of the suite: the results table, aggregate JSON, per-request JSONL, CSV and PNG plots.

The table is built here as text cells (:func:`table_rows`); :class:`PlainOutput` prints it as
fixed-width text, and :mod:`nim_async.cli.bench` draws it with rich for ``nim-async bench``. A run
over several URLs adds a table with one row per endpoint per load point (:func:`endpoint_rows`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from nim_async.bench.metrics import STAT_KEYS, RequestRecord

__all__ = [
    "CLIENT_BOUND",
    "ENDPOINT_COLUMNS",
    "TABLE_COLUMNS",
    "WORKER_COLUMNS",
    "BenchOutput",
    "PlainOutput",
    "endpoint_rows",
    "format_table",
    "table_notes",
    "table_rows",
    "worker_rows",
    "write_csv",
    "write_json",
    "write_jsonl",
    "write_plot",
]

_STAT_FIELDS = (
    "ttft_ms",
    "ttst_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "e2e_from_scheduled_ms",
    "queue_ms",
    "encode_ms",
    "upload_ms",
)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _load_label(point: dict[str, Any]) -> str:
    if point.get("request_rate") is not None:
        return f"{point['request_rate']:g} req/s"
    return f"c={point.get('concurrency')}"


TABLE_COLUMNS = (
    "load",
    "ok/n",
    "TTFT p50/p99 ms",
    "ITL p50/p99 ms",
    "TPOT p50 ms",
    "E2E p50/p99 ms",
    "queue p99 ms",
    "req/s",
    "tok/s",
    "goodput",
    "errors",
    "client",
)
"""The columns of the results table, one row per load point."""

CLIENT_BOUND = "CLIENT-BOUND"
"""Marks a row whose client had too little headroom to trust the server figures."""


def _client_cell(point: dict[str, Any]) -> str:
    client = point.get("client") or {}
    headroom = client.get("headroom")
    lag = (client.get("loop_lag_ms") or {}).get("p99")
    text = f"{_fmt(client.get('cpu_us_per_token'))} µs/tok, lag p99 {_fmt(lag, 2)} ms"
    if headroom is not None:
        text += f", {headroom:.1f}× headroom"
        if client.get("client_bound"):
            text += f" {CLIENT_BOUND}"
    return text


def _errors_cell(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (p.get("errors") or {}).items()) or "0"


def table_rows(points: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The results table as text cells: latencies (p50 / p99), throughput, goodput, errors.

    Args:
        points: Load points as :func:`~nim_async.bench.metrics.summarize` makes them.

    Returns:
        One row per point, in the order of :data:`TABLE_COLUMNS`.
    """
    rows = []
    for p in points:
        errors = _errors_cell(p)
        rows.append(
            [
                _load_label(p),
                f"{p['completed']}/{p['num_requests']}",
                f"{_fmt(p['ttft_ms']['p50'])} / {_fmt(p['ttft_ms']['p99'])}",
                f"{_fmt(p['itl_ms']['p50'], 2)} / {_fmt(p['itl_ms']['p99'], 2)}",
                _fmt(p["tpot_ms"]["p50"], 2),
                f"{_fmt(p['e2e_ms']['p50'])} / {_fmt(p['e2e_ms']['p99'])}",
                _fmt(p["queue_ms"]["p99"]),
                _fmt(p["request_throughput"], 2),
                _fmt(p["output_token_throughput"], 0),
                _fmt(p["goodput"], 2),
                errors,
                _client_cell(p),
            ]
        )
    return rows


ENDPOINT_COLUMNS = (
    "load",
    "endpoint",
    "ok/n",
    "share",
    "TTFT p50/p99 ms",
    "ITL p50/p99 ms",
    "TPOT p50 ms",
    "E2E p50/p99 ms",
    "req/s",
    "tok/s",
    "errors",
    "marked down",
    "down s",
    "server req",
)
"""The columns of the per-endpoint table of a run over several URLs."""


def endpoint_rows(points: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per endpoint per load point of a run over several URLs (none otherwise).

    Args:
        points: Load points; those with an ``endpoints`` list give rows.
    """
    rows = []
    for p in points:
        for e in p.get("endpoints") or []:
            server = e.get("server") or {}
            rows.append(
                [
                    _load_label(p),
                    e["url"],
                    f"{e['completed']}/{e['num_requests']}",
                    _pct(e["share"]),
                    f"{_fmt(e['ttft_ms']['p50'])} / {_fmt(e['ttft_ms']['p99'])}",
                    f"{_fmt(e['itl_ms']['p50'], 2)} / {_fmt(e['itl_ms']['p99'], 2)}",
                    _fmt(e["tpot_ms"]["p50"], 2),
                    f"{_fmt(e['e2e_ms']['p50'])} / {_fmt(e['e2e_ms']['p99'])}",
                    _fmt(e["request_throughput"], 2),
                    _fmt(e["output_token_throughput"], 0),
                    _errors_cell(e),
                    _fmt(e.get("marked_down")),
                    _fmt(e.get("down_s"), 2),
                    _fmt(server.get("requests"), 0),
                ]
            )
    return rows


def _endpoint_notes(point: dict[str, Any]) -> list[tuple[str, str]]:
    """How the load was spread, each endpoint's server metrics, and endpoints that failed."""
    endpoints = point.get("endpoints")
    if not endpoints:
        return []
    label = _load_label(point)
    notes: list[tuple[str, str]] = [
        (
            "info",
            f"endpoints {label}: {len(endpoints)} as one service, balance "
            f"{point.get('balance')} (each request to the endpoint with the fewest in flight); "
            + ", ".join(f"{e['url']} {e['num_requests']}" for e in endpoints)
            + f" = {point['num_requests']} requests",
        )
    ]
    for e in endpoints:
        server = e.get("server")
        if server:
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in server.items() if v is not None)
            notes.append(("info", f"server metrics {label} {e['url']}: {figures}"))
        elif server is None:
            notes.append(("info", f"server metrics {label} {e['url']}: not scraped"))
        if e.get("failed") or e.get("down_s"):
            text = f"endpoint {e['url']} {label}: {e['failed']} of {e['num_requests']} failed"
            if e.get("failed"):
                text += f" ({_errors_cell(e)})"
            if e.get("down_s"):
                text += (
                    f"; marked down for {e['down_s']:.2f} s of the point's "
                    f"{point['duration_s']:.2f} s, the others carried the load"
                )
            notes.append(("warning", text))
    return notes


def table_notes(
    points: Sequence[dict[str, Any]], *, worker_lines: bool = True
) -> list[tuple[str, str]]:
    """The lines printed under the table: server metrics and warnings.

    Args:
        points: Load points.
        worker_lines: Include one line per ``--workers`` worker (off where the workers are
            drawn as a table of their own, :func:`worker_rows`); the partial warning stays.

    Returns:
        ``(level, text)`` pairs; ``level`` is ``"info"`` or ``"warning"``.
    """
    notes: list[tuple[str, str]] = []
    for p in points:
        server = p.get("server")
        notes.extend(_endpoint_notes(p))
        if server:
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in server.items() if v is not None)
            where = ""
            if p.get("endpoints"):
                where = f" (summed over {p.get('server_endpoints')} of {len(p['endpoints'])})"
            notes.append(("info", f"server metrics {_load_label(p)}{where}: {figures}"))
        notes.extend(_worker_notes(p, worker_lines))
        if p.get("usage_chunk_mismatches"):
            notes.append(
                (
                    "warning",
                    f"warning {_load_label(p)}: usage.completion_tokens differs from the chunk "
                    f"count in {p['usage_chunk_mismatches']} requests (the server packs several "
                    "tokens per chunk, or usage is wrong); ITL is per chunk, TPOT per token",
                )
            )
    return notes


WORKER_COLUMNS = (
    "load",
    "worker",
    "pid",
    "ok/n",
    "tok/s",
    "CPU busy",
    "CPU wait",
    "µs/tok",
    "lag p99 ms",
    "headroom",
    "self-check",
    "status",
)
"""The columns of the per-worker table of a ``--workers`` run."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def worker_rows(points: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per worker per load point of a ``--workers`` run (none otherwise).

    Args:
        points: Load points; those with a ``workers`` list give rows.
    """
    rows = []
    for p in points:
        for w in p.get("workers") or []:
            busy = w.get("cpu_busy")
            bound = w.get("client_bound")
            rows.append(
                [
                    _load_label(p),
                    str(w["index"]),
                    str(w["pid"]),
                    f"{w['completed']}/{w['num_requests']}",
                    _fmt(w["output_token_throughput"], 0),
                    _pct(busy),
                    _pct(w.get("cpu_wait")),
                    _fmt(w.get("cpu_us_per_token")),
                    _fmt((w.get("loop_lag_ms") or {}).get("p99"), 2),
                    "-" if w.get("headroom") is None else f"{w['headroom']:.1f}×",
                    "-" if bound is None else (CLIENT_BOUND if bound else "ok"),
                    w.get("status", "ok"),
                ]
            )
    return rows


def _worker_notes(point: dict[str, Any], lines: bool = True) -> list[tuple[str, str]]:
    """One line per ``--workers`` worker (its rate, CPU, lag, self-check), and a partial mark."""
    workers = point.get("workers")
    if not workers:
        return []
    label = _load_label(point)
    notes: list[tuple[str, str]] = []
    for w in workers if lines else []:
        busy = w.get("cpu_busy")
        text = (
            f"{label} worker {w['index']} (pid {w['pid']}): {w['completed']}/{w['num_requests']} "
            f"ok, {_fmt(w['output_token_throughput'], 0)} tok/s, CPU busy "
            f"{_pct(busy)}, waiting for a CPU {_pct(w.get('cpu_wait'))}, "
            f"{_fmt(w.get('cpu_us_per_token'))} µs/tok, lag p99 "
            f"{_fmt((w.get('loop_lag_ms') or {}).get('p99'), 2)} ms"
        )
        if w.get("headroom") is not None:
            text += f", {w['headroom']:.1f}× headroom"
        level = "info"
        if w.get("client_bound"):
            text += f" {CLIENT_BOUND} (this worker was the bottleneck)"
            level = "warning"
        if w.get("status") != "ok":
            text += f"; {w['status']}"
            if w.get("stderr_tail"):
                text += f": {w['stderr_tail']}"
            level = "warning"
        notes.append((level, text))
    if point.get("partial"):
        dead = [w for w in workers if w.get("status") != "ok"]
        names = ", ".join(f"worker {w['index']} {w['status']}" for w in dead)
        notes.append(
            (
                "warning",
                f"PARTIAL {label}: {names}; the figures count only the requests the "
                "workers finished",
            )
        )
    return notes


def format_table(points: Sequence[dict[str, Any]]) -> str:
    """The results table as fixed-width plain text (columns right-aligned), with its notes.

    Args:
        points: Load points.
    """
    lines = _text_table("nim-async bench", TABLE_COLUMNS, table_rows(points))
    endpoints = endpoint_rows(points)
    if endpoints:
        lines += ["", *_text_table("endpoints", ENDPOINT_COLUMNS, endpoints)]
    lines.extend(text for _, text in table_notes(points))
    return "\n".join(lines)


def _text_table(title: str, columns: Sequence[str], body: list[list[str]]) -> list[str]:
    rows = [list(columns), *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [title]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


class BenchOutput(Protocol):
    """Where the suite reports: progress lines and the results table."""

    def line(self, text: str, level: str = "info") -> None:
        """Show one line; ``level`` is ``"info"``, ``"warning"`` or ``"error"``."""

    def table(self, points: Sequence[dict[str, Any]]) -> None:
        """Show the results table of the load points."""


class PlainOutput:
    """:class:`BenchOutput` as plain text on stdout (``python -m nim_async.bench``)."""

    def line(self, text: str, level: str = "info") -> None:
        """Print one line."""
        print(text, flush=True)

    def table(self, points: Sequence[dict[str, Any]]) -> None:
        """Print :func:`format_table`."""
        print(format_table(points), flush=True)


def write_json(path: str | Path, points: Sequence[dict[str, Any]]) -> None:
    """Write the aggregate results: a JSON array, one object per load point."""
    Path(path).write_bytes(orjson.dumps(list(points), option=orjson.OPT_INDENT_2))


def write_jsonl(
    path: str | Path, records: Sequence[tuple[dict[str, Any], RequestRecord, float]]
) -> None:
    """Write one JSON line per request: ``(load point labels, record, time origin)``."""
    with Path(path).open("wb") as fh:
        for labels, record, origin in records:
            fh.write(orjson.dumps({**labels, **record.to_json(origin)}) + b"\n")


def write_csv(path: str | Path, points: Sequence[dict[str, Any]]) -> None:
    """Write one CSV row per load point with every statistic flattened (``ttft_ms_p99``...).

    A run over several URLs gets an ``endpoint`` column: each point's row (``all``) is followed
    by one row per endpoint (its client columns empty).
    """
    multi = any(p.get("endpoints") for p in points)
    columns = ["concurrency", "request_rate", "num_requests", "completed", "failed", "duration_s"]
    for name in _STAT_FIELDS:
        columns += [f"{name}_{k}" for k in STAT_KEYS]
    columns += [
        "request_throughput",
        "output_token_throughput",
        "goodput",
        "errors",
        "cpu_us_per_token",
        "loop_lag_p99_ms",
        "headroom",
        "client_bound",
    ]
    stat_columns = columns[:6]
    if multi:
        columns.insert(0, "endpoint")

    def row_of(p: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {k: p.get(k) for k in stat_columns}
        row.update(concurrency=load.get("concurrency"), request_rate=load.get("request_rate"))
        for name in _STAT_FIELDS:
            for k in STAT_KEYS:
                row[f"{name}_{k}"] = (p.get(name) or {}).get(k)
        client = p.get("client") or {}
        row.update(
            request_throughput=p["request_throughput"],
            output_token_throughput=p["output_token_throughput"],
            goodput=p["goodput"],
            errors=sum((p.get("errors") or {}).values()),
            cpu_us_per_token=client.get("cpu_us_per_token"),
            loop_lag_p99_ms=(client.get("loop_lag_ms") or {}).get("p99"),
            headroom=client.get("headroom"),
            client_bound=client.get("client_bound"),
        )
        return row

    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for p in points:
            if not multi:
                writer.writerow(row_of(p, p))
                continue
            writer.writerow({"endpoint": "all", **row_of(p, p)})
            for e in p.get("endpoints") or []:
                writer.writerow({"endpoint": e["url"], **row_of(e, p)})


def write_plot(
    path: str | Path,
    points: Sequence[dict[str, Any]],
    records: Sequence[tuple[dict[str, Any], RequestRecord, float]],
) -> None:
    """Save a PNG: latency vs throughput across the sweep, and TTFT / ITL distributions.

    Needs matplotlib (``pip install 'nim-async[bench]'``).

    Raises:
        RuntimeError: when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("plots need matplotlib: pip install 'nim-async[bench]'") from exc

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    tput = [p["output_token_throughput"] for p in points]
    for key, label in (("e2e_ms", "E2E"), ("ttft_ms", "TTFT")):
        for stat, style in (("p50", "o-"), ("p99", "s--")):
            axes[0].plot(tput, [p[key][stat] for p in points], style, label=f"{label} {stat}")
    for p, x in zip(points, tput, strict=True):
        axes[0].annotate(_load_label(p), (x, p["e2e_ms"]["p50"] or 0), fontsize=7)
    axes[0].set_xlabel("output tokens/s")
    axes[0].set_ylabel("latency (ms)")
    axes[0].set_title("latency vs throughput")
    axes[0].legend(fontsize=7)
    by_point: dict[str, tuple[list[float], list[float]]] = {}
    for labels, record, _ in records:
        if not record.ok:
            continue
        name = _load_label(labels)
        ttfts, itls = by_point.setdefault(name, ([], []))
        if record.ttft is not None:
            ttfts.append(record.ttft * 1000.0)
        itls.extend(x * 1000.0 for x in record.itls)
    for name, (ttfts, itls) in by_point.items():
        if ttfts:
            axes[1].hist(ttfts, bins=40, alpha=0.5, label=name)
        if itls:
            axes[2].hist(itls, bins=60, alpha=0.5, label=name)
    axes[1].set_title("TTFT distribution")
    axes[1].set_xlabel("ms")
    axes[2].set_title("ITL distribution")
    axes[2].set_xlabel("ms")
    axes[2].set_yscale("log")
    for ax in axes[1:]:
        if by_point:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
