"""``nim-async bench`` against vLLM's own ``vllm bench serve``, on the real vLLM CPU server.

Both tools run the same workload (``benchmarks/bench_agreement.py --quick``: 8 JPEG scenes of
320x240 with one prompt, 32 requests at concurrency 4, 32 tokens with ``ignore_eos``), one after
the other, and must agree within 10 % on request throughput, output tokens/s, TTFT p50, TPOT
p50 and ITL p50. The server's ``/metrics`` deltas over each run are the third witness (and,
on a machine too busy for two runs to see the same server, the reference each tool is compared
with).

Random weights: the text is garbage, so nothing here reads it; but garbage text is what shows
the case that made the tools disagree at first: vLLM streams a token whose text its
detokenizer holds back (part of a UTF-8 character) as ``"content": ""``, one chunk per token,
and ``nim-async bench`` skipped such chunks (fewer, longer ITL gaps, a late TTFT when the first
token is one, a usage/chunk mismatch warning on most requests).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from nim_async.bench.client import BenchClient, PreparedRequest, build_body
from nim_async.bench.images import synthetic_images
from nim_async.bench.metrics import RequestRecord

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_agreement.py"
PROMPT = "Describe the coloured rectangles in this image."
TOLERANCE = 0.10


def _raw_stream(server: Any, body: bytes) -> list[dict[str, Any]]:
    """The stream's JSON chunks, read with plain httpx (no nim_async parsing)."""
    chunks = []
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=120.0,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks


async def _bench_send(server: Any, body: bytes) -> RequestRecord:
    async with BenchClient(server.url, max_connections=1) as client:
        record = RequestRecord(index=0, scheduled_start=0.0, start=0.0)
        return await client.send(PreparedRequest(body=body, encode_s=0.0), record)


def test_bench_client_counts_every_token_vllm_streams(vllm_server: Any) -> None:
    """One arrival per generated token, also for tokens vLLM streams as ``content: ""``."""
    images = synthetic_images(8, [(320, 240)], seed=0)
    for image in images:  # the first scene whose answer holds an empty-content token chunk
        body = build_body(image.data, mime=image.mime, model=vllm_server.model,
                          task_type="generic", prompt=PROMPT, max_tokens=32).body  # fmt: skip
        raw = _raw_stream(vllm_server, body)
        deltas = [c["choices"][0]["delta"] for c in raw if c.get("choices")]
        tokens = [d for d in deltas if "role" not in d]
        if any(d.get("content") == "" for d in tokens):
            break
    else:
        pytest.fail("no scene gave an empty-content token chunk; the check below proves nothing")
    usage = next(c["usage"] for c in raw if c.get("usage"))
    assert len(tokens) == usage["completion_tokens"] == 32  # vLLM: one chunk per token
    # temperature 0: the same answer. A busy vLLM API server may merge tokens it has not sent
    # yet into one chunk (fewer chunks, never more); a client that skips empty-content chunks
    # can never count 32, so one of three sends must.
    for _ in range(3):
        record = asyncio.run(_bench_send(vllm_server, body))
        assert record.ok, record.error_message
        assert record.output_tokens == 32
        if record.chunks == 32:
            break
    assert record.chunks == 32, "the bench client skipped token chunks with empty content"
    assert not record.usage_mismatch
    assert len(record.itls) == 31


def _run_agreement(tmp_path: Path, attempt: int) -> dict[str, Any]:
    out = tmp_path / f"agreement-{attempt}.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out),
         "--tolerance", str(TOLERANCE), "--workdir", str(tmp_path / f"work-{attempt}")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode in (0, 1), f"a tool failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    return result


ATTEMPTS = 3


@pytest.mark.timeout(900)  # vllm bench imports torch + vllm: ~15 s quiet, over 60 s on a busy box
def test_nim_bench_agrees_with_vllm_bench_serve(vllm_server: Any, tmp_path: Path) -> None:
    """Same workload, same server, one run each: the five figures agree within 10 %.

    Where a p50 disagrees beyond that, the server's own p50 over each run (its TTFT, TPOT and
    per-token ITL histogram buckets) must side with nim-async bench (closer to it, and within
    25 %: the buckets are coarse), which makes vllm bench the one that is off; or, for TTFT and
    TPOT, the server's own mean of that figure must have moved between the runs by more than
    half the tolerance with each tool's reading over the server's own agreeing between the tools
    (the server was not the same in both runs; its E2E may still have held still); or the
    tools' means of that figure agree within half the tolerance with the same reading over the
    server's own (a median of 32 bimodal per-request values jumped; the means held).

    The server's own histograms over each run are the third witness. When the tools disagree
    and the server itself was faster or slower between the two runs by more than half the
    tolerance (its E2E mean; this 2-core machine is shared, so other work changes its speed),
    or served someone else's requests meanwhile, the pair runs again, up to three times. If
    the server never held still, the check is made against the witness instead: each tool's
    TPOT, E2E and req/s over the server's own over that tool's run must agree between the
    tools within the tolerance (on a machine that busy both read E2E ~13 % above the
    server's own: the API server's HTTP path lags too).
    """
    for attempt in range(1, ATTEMPTS + 1):
        result = _run_agreement(tmp_path, attempt)
        change = result.get("server_change")
        alone = all(result["server_agreement"][side]["valid"] for side in ("nim", "vllm"))
        steady = alone and change is not None and abs(change) <= TOLERANCE / 2
        if result["comparison"]["agree"] or steady:
            break
    table = result["stdout"]
    nim, vllm = result["nim"]["raw"], result["vllm"]["raw"]
    # both runs found the server's image and prefix caches warm (one primed request per image)
    assert result["workload"]["primed_requests"] == 8, table
    # the same workload: every request done, the same prompt and output tokens on both sides
    assert nim["completed"] == vllm["completed"] == 32, table
    assert nim["failed"] == vllm["failed"] == 0, table
    assert nim["output_tokens"] == vllm["total_output_tokens"] == 32 * 32, table
    assert nim["prompt_tokens"] == vllm["total_input_tokens"] > 32 * 64, table  # image tokens
    # (usage/chunk mismatches are not asserted: a busy vLLM API server merges the outputs it
    # has not sent yet into one chunk, for both tools; the counting is checked above)
    agreement = result["server_agreement"]
    for side in ("nim", "vllm"):
        assert result[side]["witness"] is not None, f"no /metrics over the {side} run"
    if result["comparison"]["agree"] or steady:
        for side in ("nim", "vllm"):  # each tool against the server over its own run
            if agreement[side]["valid"]:  # the server counted exactly this run
                for figure in ("tpot", "e2e", "throughput"):
                    ratio = agreement[side][figure]
                    assert abs(ratio - 1) <= TOLERANCE, (side, figure, ratio, table)
        # a figure beyond the tolerance passes only when the server's own p50 over the two
        # runs (its histogram buckets) sides with nim-async bench: then vllm bench is off
        # or when the server's own mean of that figure moved between the runs and each tool
        # moved with it (their readings over the server's own agree)
        script = _script()
        failed = [
            r["label"]
            for r in result["comparison"]["rows"]
            if not r["ok"]
            and not script.server_sides_with_nim(r)
            and not script.server_explains(r, result, TOLERANCE)
            and not script.medians_of_few(r, result, TOLERANCE)
        ]
        assert not failed, f"disagree beyond {TOLERANCE:.0%}: {failed}\n{table}"
        return
    no_witness = f"the server moved ({change}) between the runs and had other traffic\n{table}"
    assert agreement["nim"]["valid"], no_witness
    assert agreement["vllm"]["valid"], no_witness
    for figure in ("tpot", "e2e", "throughput"):
        a, b = agreement["nim"][figure], agreement["vllm"][figure]
        assert abs(a - b) / max(a, b) <= TOLERANCE, (figure, a, b, table)


def _script() -> Any:
    """``benchmarks/bench_agreement.py`` as a module."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_agreement
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_agreement


def test_agreement_table_names_a_disagreement() -> None:
    """The script's comparison fails a figure that differs by more than the tolerance."""
    bench_agreement = _script()
    nim = {
        "raw": {
            "request_throughput": 2.0,
            "output_token_throughput": 64.0,
            "ttft_ms": {"p50": 100.0},
            "tpot_ms": {"p50": 40.0},
            "itl_ms": {"p50": 40.0},
        }
    }
    vllm = {
        "raw": {
            "request_throughput": 2.1,
            "output_throughput": 67.0,
            "median_ttft_ms": 130.0,
            "median_tpot_ms": 41.0,
            "median_itl_ms": 39.0,
            "itls": [[0.001, 0.04]],
        }
    }
    cmp_ = bench_agreement.compare(nim, vllm, TOLERANCE)
    verdict = {r["key"]: r["ok"] for r in cmp_["rows"]}
    assert verdict == {"request_throughput": True, "output_throughput": True,
                       "ttft_p50": False, "tpot_p50": True, "itl_p50": True}  # fmt: skip
    assert not cmp_["agree"]
    assert cmp_["vllm_itl_without_first_gap"]["p50"] == pytest.approx(40.0)
    # the server's own p50 decides a disagreement: with nim-async (closer, within 25 %) or not
    row = {"nim": 17.1, "vllm": 14.5, "server_nim_run": 18.2, "server_vllm_run": 18.4}
    assert bench_agreement.server_sides_with_nim(row)
    assert not bench_agreement.server_sides_with_nim({**row, "nim": 12.0})
    assert not bench_agreement.server_sides_with_nim({**row, "server_nim_run": None})
    # the server moved: its TTFT mean 49.4 -> 40.2 ms, each tool ~1.2x over it (CI's case)
    result = {
        "nim": {"witness": {"valid": True, "ttft_ms": 49.39}},
        "vllm": {"witness": {"valid": True, "ttft_ms": 40.16}},
        "server_agreement": {"nim": {"ttft": 1.188}, "vllm": {"ttft": 1.214}},
    }
    ttft = {"key": "ttft_p50"}
    assert bench_agreement.server_explains(ttft, result, TOLERANCE)
    assert not bench_agreement.server_explains({"key": "itl_p50"}, result, TOLERANCE)
    held = {**result, "vllm": {"witness": {"valid": True, "ttft_ms": 48.0}}}
    assert not bench_agreement.server_explains(ttft, held, TOLERANCE)  # the server held still
    apart = {**result, "server_agreement": {"nim": {"ttft": 1.40}, "vllm": {"ttft": 1.214}}}
    assert not bench_agreement.server_explains(ttft, apart, TOLERANCE)  # a tool is off
    other = {**result, "vllm": {"witness": {"valid": False, "ttft_ms": 40.16}}}
    assert not bench_agreement.server_explains(ttft, other, TOLERANCE)  # someone else's traffic
    # the medians of 32 requests jumped apart while the means held (CI's TPOT case)
    few = {
        "comparison": {"shown": [{"key": "tpot_mean", "nim": 8.96, "vllm": 9.26}]},
        "server_agreement": {
            "nim": {"tpot": 1.010, "valid": 1.0},
            "vllm": {"tpot": 1.001, "valid": 1.0},
        },
    }
    tpot = {"key": "tpot_p50"}
    assert bench_agreement.medians_of_few(tpot, few, TOLERANCE)
    assert not bench_agreement.medians_of_few({"key": "itl_p50"}, few, TOLERANCE)
    far = {**few, "comparison": {"shown": [{"key": "tpot_mean", "nim": 8.96, "vllm": 10.0}]}}
    assert not bench_agreement.medians_of_few(tpot, far, TOLERANCE)  # the means disagree too
    high = {"tpot": 1.2, "valid": 1.0}
    off = {**few, "server_agreement": {**few["server_agreement"], "nim": high}}
    assert not bench_agreement.medians_of_few(tpot, off, TOLERANCE)  # one tool reads high
