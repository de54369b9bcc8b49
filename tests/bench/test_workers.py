"""``--workers N``: shares add up, merged figures come from all samples, a dead worker shows."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from nim_async.bench.loopback_server import LoopbackSSEServer
from nim_async.bench.metrics import RequestRecord
from nim_async.bench.report import format_table
from nim_async.bench.workers import WorkerProcess, merge_point, run_workers, share
from nim_async.cli.bench import RichBenchOutput


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        task="vqa",
        prompt=None,
        timeout=30.0,
        max_tokens=8,
        no_ignore_eos=False,
        seed=0,
        image_dir=None,
        image_sizes="64x48",
        num_images=2,
        image_noise=0.1,
        api_key=None,
    )


def _load(concurrency: int, num_requests: int, warmup: int) -> dict[str, object]:
    return {
        "concurrency": concurrency,
        "request_rate": None,
        "arrival": "poisson",
        "burstiness": 1.0,
        "max_concurrency": None,
        "num_requests": num_requests,
        "duration": None,
        "warmup": warmup,
        "seed": 0,
    }


@pytest.fixture
async def loopback() -> AsyncIterator[LoopbackSSEServer]:
    server = LoopbackSSEServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def _record(index: int, start: float, latency_s: float, tokens: int = 4) -> RequestRecord:
    ttft = latency_s / 2
    step = (latency_s - ttft) / (tokens - 1)
    times = [start + ttft + i * step for i in range(tokens)]
    return RequestRecord(
        index=index,
        scheduled_start=start,
        start=start,
        end=start + latency_s,
        token_times=times,
        output_tokens=tokens,
    )


def test_shares_add_up_to_the_total() -> None:
    for total in (1, 5, 31, 256):
        for count in (1, 2, 3, 7):
            parts = [share(total, count, i) for i in range(count)]
            assert sum(parts) == total
            assert max(parts) - min(parts) <= 1


def test_merged_percentiles_come_from_all_samples() -> None:
    # worker 0: 90 requests of 10 ms; worker 1: 10 requests of 1 s, on the same clock.
    fast = [_record(i, 100.0 + i * 0.01, 0.010) for i in range(90)]
    slow = [_record(i, 100.0 + i * 0.1, 1.0) for i in range(10)]
    point = merge_point([fast, slow], concurrency=2, request_rate=None)
    assert point["num_requests"] == 100
    assert point["completed"] == 100
    assert point["output_tokens"] == 400
    # union: 90 of 100 samples are 10 ms, so p50 = 10 ms; the p99 is in the 1 s tail
    assert point["e2e_ms"]["p50"] == pytest.approx(10.0)
    assert point["e2e_ms"]["p99"] == pytest.approx(1000.0)
    assert point["e2e_ms"]["p90"] == pytest.approx(10.0 + (1000.0 - 10.0) * 0.1)
    assert point["ttft_ms"]["p50"] == pytest.approx(5.0)
    assert point["e2e_ms"]["mean"] == pytest.approx((90 * 10.0 + 10 * 1000.0) / 100)
    # an average of the two workers' p50s would be 505 ms
    per_worker = [merge_point([rs], concurrency=1, request_rate=None) for rs in (fast, slow)]
    averaged = sum(p["e2e_ms"]["p50"] for p in per_worker) / 2
    assert averaged == pytest.approx(505.0)
    assert point["e2e_ms"]["p50"] != pytest.approx(averaged)
    # throughput over the union's span: first start 100.0 s, last end 100.9 + 1.0 s
    assert point["duration_s"] == pytest.approx(1.9)
    assert point["output_token_throughput"] == pytest.approx(400 / 1.9)


async def test_request_counts_add_up_across_workers(loopback: LoopbackSSEServer) -> None:
    points, records = await run_workers(
        _args(),
        loopback.url,
        "loopback",
        [_load(5, 31, 4), _load(2, 7, 0)],
        count=3,
        ceiling=None,
        headroom_bound=3.0,
    )
    first, second = points
    assert first["num_requests"] == first["completed"] == 31
    assert [w["num_requests"] for w in first["workers"]] == [11, 10, 10]
    assert sum(w["output_tokens"] for w in first["workers"]) == first["output_tokens"] == 31 * 8
    assert second["num_requests"] == 7
    # concurrency 2 over 3 workers: the third worker has no share and sends nothing
    assert [w["num_requests"] for w in second["workers"]] == [4, 3, 0]
    assert not first["partial"]
    assert not second["partial"]
    assert all(w["status"] == "ok" for p in points for w in p["workers"])
    assert len({w["pid"] for w in first["workers"]}) == 3
    # the self-check's inputs, per worker: time on a CPU and waiting for one (Linux schedstat)
    assert all(isinstance(w["cpu_busy"], float) for w in first["workers"])
    assert all(isinstance(w["cpu_wait"], float) for w in first["workers"])
    assert all(w["client_bound"] in (True, False) for w in first["workers"])
    # the server saw the measured requests plus the warm-up, nothing else
    assert loopback.requests == 31 + 4 + 7
    assert len(records) == 38
    assert sorted({labels["worker"] for labels, _, _ in records}) == [0, 1, 2]


async def test_workers_start_measuring_together_after_a_point_they_skip(
    loopback: LoopbackSSEServer,
) -> None:
    """A worker with no share of a point must still wait for the others at the next one."""
    points, records = await run_workers(
        _args(),
        loopback.url,
        "loopback",
        [_load(1, 40, 0), _load(2, 8, 0)],
        count=2,
        ceiling=None,
        headroom_bound=3.0,
    )
    assert [w["num_requests"] for w in points[0]["workers"]] == [40, 0]
    assert [w["num_requests"] for w in points[1]["workers"]] == [4, 4]
    second = [(labels, r, origin) for labels, r, origin in records if labels["concurrency"] == 2]
    assert {labels["worker"] for labels, _, _ in second} == {0, 1}
    # every measured request of the second point was sent after the parent's "go"
    assert all(r.scheduled_start >= origin for _, r, origin in second)


async def test_a_worker_that_dies_is_reported(loopback: LoopbackSSEServer) -> None:
    killed: list[int] = []

    def kill_one(point: int, workers: Sequence[WorkerProcess]) -> None:
        if point == 0:
            os.kill(workers[1].pid, signal.SIGKILL)
            killed.append(workers[1].pid)

    points, _ = await run_workers(
        _args(),
        loopback.url,
        "loopback",
        [_load(4, 20, 2), _load(4, 8, 0)],
        count=2,
        ceiling=None,
        headroom_bound=3.0,
        on_ready=kill_one,
    )
    assert killed
    for point in points:
        dead = point["workers"][1]
        assert point["partial"] is True
        assert dead["pid"] == killed[0]
        assert dead["exit_status"] == -signal.SIGKILL
        assert "SIGKILL" in dead["status"]
        assert point["workers"][0]["status"] == "ok"
    # only the live worker's share was measured
    assert [p["completed"] for p in points] == [10, 4]
    assert [p["workers"][0]["completed"] for p in points] == [10, 4]
    table = format_table(points)
    assert "PARTIAL c=4: worker 1 killed by SIGKILL (exit status -9)" in table
    assert f"worker 1 (pid {killed[0]}): 0/0 ok" in table
    # nim-async bench (rich): a workers table with the status, and the partial warning
    console = Console(record=True, width=200)
    RichBenchOutput(console).table(points)
    drawn = console.export_text()
    assert "workers (each one's self-check)" in drawn
    assert "killed by SIGKILL (exit status -9)" in drawn
    assert "PARTIAL c=4" in drawn


def test_cli_workers_run_reports_each_worker(tmp_path: Path) -> None:
    """``python -m nim_async.bench --workers 2`` against the loopback server in its own process."""
    server = subprocess.Popen(
        [sys.executable, "-m", "nim_async.bench.loopback_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        out = tmp_path / "w.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nim_async.bench",
                "--url",
                url,
                "--workers",
                "2",
                "--concurrency",
                "4",
                "--num-requests",
                "30",
                "--max-tokens",
                "16",
                "--num-images",
                "2",
                "--image-sizes",
                "64x48",
                "--no-self-check",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker 0 (pid" in proc.stdout
    assert "worker 1 (pid" in proc.stdout
    (point,) = orjson.loads(out.read_bytes())
    assert point["num_workers"] == 2
    assert point["completed"] == 30
    assert sum(w["completed"] for w in point["workers"]) == 30
    assert point["output_tokens"] == 30 * 16
    lines = (tmp_path / "w.requests.jsonl").read_bytes().splitlines()
    assert sorted({orjson.loads(line)["worker"] for line in lines}) == [0, 1]


async def test_bench_exits_1_and_says_partial_when_a_worker_dies(
    loopback: LoopbackSSEServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's exit status and output when one of its workers is killed."""
    from nim_async.bench import cli as bench_cli
    from nim_async.bench import workers as workers_mod

    real = workers_mod.run_workers

    async def killing(*args: object, **kwargs: object) -> object:
        def kill(point: int, workers: Sequence[WorkerProcess]) -> None:
            if point == 0:
                os.kill(workers[0].pid, signal.SIGKILL)

        kwargs["on_ready"] = kill
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workers_mod, "run_workers", killing)
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--url",
            loopback.url,
            "--workers",
            "2",
            "--concurrency",
            "2",
            "--num-requests",
            "6",
            "--max-tokens",
            "4",
            "--num-images",
            "1",
            "--image-sizes",
            "64x48",
            "--no-self-check",
        ]
    )
    status = await bench_cli.run(args)
    out = capsys.readouterr().out
    assert status == 1
    assert "(PARTIAL)" in out
    assert "worker 0 killed by SIGKILL (exit status -9)" in out


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_interrupted_bench_terminates_its_workers() -> None:
    """Ctrl-C reaches only the parent (workers have sessions of their own): it ends them."""
    server = subprocess.Popen(
        [sys.executable, "-m", "nim_async.bench.loopback_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        bench = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nim_async.bench",
                "--url",
                url,
                "--workers",
                "2",
                "--concurrency",
                "2",
                "--duration",
                "120",
                "--max-tokens",
                "4",
                "--num-images",
                "1",
                "--image-sizes",
                "64x48",
                "--no-self-check",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert bench.stdout is not None
        for line in bench.stdout:
            if "worker processes" in line:
                break
        workers: list[int] = []
        for _ in range(200):  # until both workers have started (at most ~20 s)
            workers = [p for p in _children(bench.pid) if p != bench.pid]
            if len(workers) >= 2:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert len(workers) >= 2
        bench.send_signal(signal.SIGINT)
        status = bench.wait(timeout=60)
        bench.stdout.close()
        assert status == 130
        assert not any(_alive(p) for p in workers)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()
