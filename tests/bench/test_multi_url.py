"""``nim-async bench --url A --url B``: several endpoints driven as one service.

Against real emulators, each in its own process (``nim_async.bench.emulator_proc``) with a
different ``--itl-ms``: the per-endpoint request counts add up to the total, the merged
percentiles are those of the pooled samples, the faster endpoint serves more, an endpoint that
is down (refuses connections, or drops every stream) shows its errors while the other completes,
``--workers 2`` balances over both URLs, and the command line checks its ``--url`` options.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from nim_async.bench import cli as bench_cli
from nim_async.bench.client import BenchClient, build_body
from nim_async.bench.emulator_proc import EmulatorProcess
from nim_async.bench.endpoints import LeastOutstanding, add_endpoint_figures, check_url
from nim_async.bench.images import synthetic_images
from nim_async.bench.load import LoadSpec, run_load
from nim_async.bench.metrics import RequestRecord, percentile, summarize
from nim_async.bench.report import format_table
from nim_async.cli import main as nim_async_main
from nim_async.cli.bench import RichBenchOutput
from nim_async.emulator import Emulator, EmulatorSettings

FAST_ITL_MS = 1.0
SLOW_ITL_MS = 12.0
TOKENS = 16


class Recorder:
    """The suite's output kept as text (a :class:`~nim_async.bench.report.BenchOutput`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.points: list[dict[str, Any]] = []

    def line(self, text: str, level: str = "info") -> None:
        self.lines.append(text)

    def table(self, points: Sequence[dict[str, Any]]) -> None:
        self.points = list(points)
        self.lines.append(format_table(points))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
async def two_emulators() -> AsyncIterator[tuple[str, str]]:
    """(fast URL, slow URL): two emulator processes that differ only in their ITL."""
    fast = EmulatorProcess({"ttft_ms": 2.0, "itl_ms": FAST_ITL_MS})
    slow = EmulatorProcess({"ttft_ms": 2.0, "itl_ms": SLOW_ITL_MS})
    await asyncio.gather(fast.__aenter__(), slow.__aenter__())
    try:
        yield fast.url, slow.url
    finally:
        await asyncio.gather(fast.__aexit__(None, None, None), slow.__aexit__(None, None, None))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


def _argv(
    urls: Sequence[str], *extra: str, concurrency: int = 4, requests: int = 48, warmup: int = 0
) -> list[str]:
    argv = [x for url in urls for x in ("--url", url)]
    return [
        *argv,
        "--concurrency",
        str(concurrency),
        "--num-requests",
        str(requests),
        "--warmup",
        str(warmup),
        "--max-tokens",
        str(TOKENS),
        "--num-images",
        "2",
        "--image-sizes",
        "64x48",
        "--no-self-check",
        *extra,
    ]


async def _bench(argv: list[str]) -> tuple[int, Recorder]:
    out = Recorder()
    status = await bench_cli.run(_parse(argv), out)
    return status, out


def _endpoint(point: dict[str, Any], url: str) -> dict[str, Any]:
    (section,) = [e for e in point["endpoints"] if e["url"] == url]
    assert isinstance(section, dict)
    return section


async def test_counts_add_up_and_the_faster_endpoint_serves_more(
    two_emulators: tuple[str, str], tmp_path: Path
) -> None:
    fast, slow = two_emulators
    out_json = tmp_path / "multi.json"
    status, out = await _bench(_argv([fast, slow], "--json", str(out_json), warmup=4))
    assert status == 0, out.text
    (point,) = orjson.loads(out_json.read_bytes())
    assert point["urls"] == [fast, slow]
    assert point["url"] is None
    assert point["balance"] == "least-outstanding"
    a, b = _endpoint(point, fast), _endpoint(point, slow)
    # every request went to exactly one endpoint, and the figures add up to the whole
    assert point["num_requests"] == point["completed"] == 48
    assert a["num_requests"] + b["num_requests"] == 48
    assert a["completed"] + b["completed"] == 48
    assert a["output_tokens"] + b["output_tokens"] == point["output_tokens"] == 48 * TOKENS
    assert a["share"] + b["share"] == pytest.approx(1.0)
    assert a["duration_s"] == b["duration_s"] == point["duration_s"]
    assert a["request_throughput"] + b["request_throughput"] == pytest.approx(
        point["request_throughput"]
    )
    # least outstanding: the endpoint that finishes sooner is sent more
    assert a["num_requests"] > 2 * b["num_requests"] > 0
    assert a["itl_ms"]["p50"] < b["itl_ms"]["p50"]
    # the server-metrics witness, per endpoint and summed: scraped after the warm-up, so it
    # counts exactly the measured requests
    assert a["server"]["requests"] == a["num_requests"]
    assert b["server"]["requests"] == b["num_requests"]
    assert point["server"]["requests"] == 48
    assert point["server"]["generation_tokens"] == 48 * TOKENS
    assert point["server_endpoints"] == 2
    assert a["errors"] == b["errors"] == point["errors"] == {}
    # stated in the report, with a row per endpoint
    assert "least-outstanding" in out.text
    assert f"{fast} {a['num_requests']}, {slow} {b['num_requests']} = 48 requests" in out.text
    assert f"server metrics c=4 {fast}: " in out.text
    assert "server metrics c=4 (summed over 2 of 2): " in out.text
    assert "done: c=4 48/48 ok" in out.text
    # the per-request lines name their endpoint; the CSV has a row for the set and each one
    lines = [orjson.loads(x) for x in (tmp_path / "multi.requests.jsonl").read_bytes().split()]
    assert sorted({x["endpoint"] for x in lines}) == sorted([fast, slow])
    assert sum(x["endpoint"] == fast for x in lines) == a["num_requests"]
    with (tmp_path / "multi.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["endpoint"] for r in rows] == ["all", fast, slow]
    assert [r["num_requests"] for r in rows] == [
        "48",
        str(a["num_requests"]),
        str(b["num_requests"]),
    ]
    assert all(r["concurrency"] == "4" for r in rows)
    # nim-async bench (rich) draws the endpoints' table
    console = Console(record=True, width=240)
    RichBenchOutput(console).table(out.points)
    drawn = console.export_text()
    assert "endpoints (one service)" in drawn
    assert fast in drawn
    assert slow in drawn


async def test_merged_percentiles_are_those_of_the_pooled_samples(
    two_emulators: tuple[str, str], tmp_path: Path
) -> None:
    fast, slow = two_emulators
    out_json = tmp_path / "p.json"
    status, out = await _bench(_argv([fast, slow], "--json", str(out_json), requests=40))
    assert status == 0, out.text
    (point,) = orjson.loads(out_json.read_bytes())
    lines = [orjson.loads(x) for x in (tmp_path / "p.requests.jsonl").read_bytes().split()]
    assert len(lines) == 40
    for key, samples in (
        ("e2e_ms", [x["e2e_ms"] for x in lines]),
        ("ttft_ms", [x["ttft_ms"] for x in lines]),
        ("tpot_ms", [x["tpot_ms"] for x in lines]),
        ("itl_ms", [g for x in lines for g in x["itl_ms"]]),
    ):
        pooled = sorted(samples)
        for q, stat in ((50, "p50"), (90, "p90"), (99, "p99")):
            # the JSON lines round to 0.1 µs
            assert point[key][stat] == pytest.approx(percentile(pooled, q), abs=1e-3), (key, q)
    # not the average of the endpoints' percentiles (the two ITLs differ twelvefold)
    sections = point["endpoints"]
    averaged = sum(e["e2e_ms"]["p99"] for e in sections) / len(sections)
    assert point["e2e_ms"]["p99"] != pytest.approx(averaged, rel=0.05)


def test_endpoint_figures_pool_the_samples() -> None:
    """The merge itself, on known samples: 90 fast and 10 slow requests on two endpoints."""

    def record(i: int, start: float, latency: float, url: str) -> RequestRecord:
        times = [start + latency / 2 + k * latency / 6 for k in range(4)]
        return RequestRecord(i, start, start, start + latency, token_times=times, endpoint=url)

    records = [record(i, 10.0 + i * 0.01, 0.010, "http://a") for i in range(90)]
    records += [record(90 + i, 10.0 + i * 0.1, 1.0, "http://b") for i in range(10)]
    point = summarize(records, concurrency=2)
    add_endpoint_figures(point, records, ["http://a", "http://b"], marked_down=[0, 0])
    a, b = point["endpoints"]
    assert (a["num_requests"], b["num_requests"]) == (90, 10)
    assert a["share"] == pytest.approx(0.9)
    assert point["e2e_ms"]["p50"] == pytest.approx(10.0)
    assert point["e2e_ms"]["p99"] == pytest.approx(1000.0)
    assert (a["e2e_ms"]["p50"] + b["e2e_ms"]["p50"]) / 2 == pytest.approx(505.0)
    assert a["duration_s"] == b["duration_s"] == point["duration_s"]
    assert a["output_token_throughput"] + b["output_token_throughput"] == pytest.approx(
        point["output_token_throughput"]
    )


@pytest.mark.parametrize("failure", ["refused", "drops"])
async def test_an_endpoint_down_from_the_start_shows_its_errors_and_the_other_completes(
    failure: str, tmp_path: Path
) -> None:
    async with EmulatorProcess({"ttft_ms": 2.0, "itl_ms": 2.0}) as live:
        if failure == "refused":
            dead_url = f"http://127.0.0.1:{_free_port()}"
            status, out = await _bench(_argv([live.url, dead_url], requests=40))
            kind = "ConnectError"
        else:
            async with EmulatorProcess({"disconnect_after": 2}) as dropping:
                dead_url = dropping.url
                status, out = await _bench(_argv([live.url, dead_url], requests=40))
            kind = "RemoteProtocolError"
    assert status == 0, out.text
    (point,) = out.points
    ok, dead = _endpoint(point, live.url), _endpoint(point, dead_url)
    assert ok["num_requests"] + dead["num_requests"] == point["num_requests"] == 40
    # the live endpoint completed every request it was sent, which is nearly all of them
    assert ok["completed"] == ok["num_requests"] >= 30
    assert ok["errors"] == {}
    # the dead one's failures are its own, it was marked down and kept out of the rotation
    assert dead["num_requests"] >= 1
    assert dead["completed"] == 0
    assert dead["errors"] == {kind: dead["num_requests"]}
    assert point["errors"] == dead["errors"]
    assert point["completed"] == ok["completed"]
    assert dead["marked_down"] >= 1
    assert dead["down_s"] > 0
    assert ok["down_s"] == 0
    assert f"endpoint {dead_url} c=4: {dead['num_requests']} of {dead['num_requests']} failed" in (
        out.text
    )
    assert f"({kind}: {dead['num_requests']})" in out.text


async def test_an_endpoint_that_comes_back_is_probed_and_used_again() -> None:
    """Down at the start, started one second in: the balancer's probe finds it and sends to it."""
    port = _free_port()
    image = synthetic_images(1, [(64, 48)], seed=0, noise=0.1)[0]
    body = build_body(
        image.data, mime=image.mime, model="cosmos-reason1-7b", task_type="vqa", max_tokens=8
    )
    settings = EmulatorSettings(ttft_ms=2.0, itl_ms=2.0)
    async with Emulator(settings, host="127.0.0.1", port=0) as live:
        clients = [BenchClient(live.url), BenchClient(f"http://127.0.0.1:{port}")]
        balancer = LeastOutstanding(clients, backoff=0.2, max_backoff=0.4)
        late = Emulator(settings, host="127.0.0.1", port=port)

        async def start_late() -> None:
            await asyncio.sleep(1.0)
            await late.start()

        try:
            starter = asyncio.create_task(start_late())
            spec = LoadSpec(concurrency=4, num_requests=None, duration=3.0)
            result = await run_load(balancer, [body], spec)
            await starter
        finally:
            await late.stop()
            for c in clients:
                await c.aclose()
    revived = [r for r in result.records if r.endpoint == clients[1].base_url]
    failed = [r for r in revived if not r.ok]
    served = [r for r in revived if r.ok]
    assert failed
    assert all(r.error == "ConnectError" for r in failed)
    assert served, "the endpoint was not used again after it came back"
    assert max(r.end for r in failed) < min(r.start for r in served)
    marked, down = balancer.counters()
    assert marked == [0, 1]
    assert 0.8 < down[1] < 2.5
    assert all(r.ok for r in result.records if r.endpoint == live.url)


async def test_workers_2_balance_over_both_urls(
    two_emulators: tuple[str, str], tmp_path: Path
) -> None:
    fast, slow = two_emulators
    out_json = tmp_path / "w.json"
    status, out = await _bench(
        _argv([fast, slow], "--workers", "2", "--json", str(out_json), requests=40)
    )
    assert status == 0, out.text
    (point,) = orjson.loads(out_json.read_bytes())
    assert point["num_workers"] == 2
    assert not point["partial"]
    assert point["urls"] == [fast, slow]
    a, b = _endpoint(point, fast), _endpoint(point, slow)
    assert point["num_requests"] == point["completed"] == 40
    assert a["num_requests"] + b["num_requests"] == 40
    assert sum(w["completed"] for w in point["workers"]) == 40
    assert a["num_requests"] > b["num_requests"] > 0
    # every worker balanced its own share over both endpoints
    lines = [orjson.loads(x) for x in (tmp_path / "w.requests.jsonl").read_bytes().split()]
    by_worker = {(x["worker"], x["endpoint"]) for x in lines}
    assert by_worker == {(w, url) for w in (0, 1) for url in (fast, slow)}
    assert a["server"]["requests"] == a["num_requests"]
    assert point["server"]["requests"] == 40
    assert "(each worker balances its own share)" in out.text
    assert a["marked_down"] == b["marked_down"] == 0


def test_url_repeated_parses_in_order() -> None:
    args = _parse(["--url", "http://a:8000/", "--url", "https://b.example:9000/nim"])
    assert args.urls == ["http://a:8000", "https://b.example:9000/nim"]
    assert _parse([]).urls is None
    assert check_url(" http://127.0.0.1:8000 ") == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:8000", "it must start with http:// or https://"),
        ("ftp://host:21", "it must start with http:// or https://"),
        ("http://", "no host"),
        ("http://host:99999", "Port out of range"),
        ("http://host:80x", "Port could not be cast"),
        ("http://host:8000/?a=1", "without ? or #"),
    ],
)
def test_a_bad_url_is_a_clear_usage_error(
    url: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["--url", "http://ok:8000", "--url", url])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --url: bad URL {url!r}: " in err
    assert reason in err


def test_nim_async_bench_rejects_a_bad_or_repeated_url(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the ``nim-async`` entry point, which hands ``bench`` its arguments."""
    with pytest.raises(SystemExit) as exc:
        nim_async_main(["bench", "--url", "localhost:8000"])
    assert exc.value.code == 2
    assert "bad URL 'localhost:8000'" in capsys.readouterr().err
    status = nim_async_main(
        ["bench", "--url", "http://h:1", "--url", "http://h:1/", "--no-self-check"]
    )
    assert status == 2
    assert "--url given twice: http://h:1" in capsys.readouterr().out
