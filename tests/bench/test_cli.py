"""`python -m nim_async.bench --quick` against the emulator writes valid outputs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import orjson

from nim_async.bench.metrics import STAT_KEYS


def test_quick_run_writes_json_that_validates(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    plot = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nim_async.bench",
            "--quick",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--slo",
            "ttft=1000,e2e=5000",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-check" in proc.stdout
    assert "emulator" in proc.stdout
    points = orjson.loads(out.read_bytes())
    assert isinstance(points, list)
    assert [p["concurrency"] for p in points] == [1, 4]
    for p in points:
        assert p["request_rate"] is None
        for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            assert set(p[key]) == set(STAT_KEYS)
            assert all(isinstance(p[key][k], float) for k in STAT_KEYS)
            assert p[key]["p50"] <= p[key]["p99"]
        for key in ("request_throughput", "output_token_throughput", "goodput"):
            assert isinstance(p[key], float)
            assert p[key] > 0
        assert p["errors"] == {}
        assert p["completed"] == p["num_requests"] == 12
        assert isinstance(p["client"]["cpu_us_per_token"], float)
        assert isinstance(p["client"]["headroom"], float)
        assert isinstance(p["client"]["client_bound"], bool)
        assert p["server"] is not None
        assert p["server"]["ttft_ms"] is not None
    lines = (tmp_path / "out.requests.jsonl").read_bytes().splitlines()
    assert len(lines) == 24
    first = orjson.loads(lines[0])
    assert first["concurrency"] == 1
    assert isinstance(first["ttft_ms"], float)
    with (tmp_path / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["concurrency"] for r in rows] == ["1", "4"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bad_options_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nim_async.bench",
            "--quick",
            "--slo",
            "latency=5",
            "--no-self-check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "SLO" in proc.stdout


def test_output_into_a_missing_folder_is_refused_before_the_run(tmp_path: Path) -> None:
    """The results are written after the whole run: a folder that is not there fails first."""
    out = tmp_path / "missing" / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "nim_async.bench", "--quick", "--no-self-check", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--json {out}" in proc.stdout
    assert "does not exist" in proc.stdout
    assert "starting the emulator" not in proc.stdout  # refused before any load
    assert not out.parent.exists()
