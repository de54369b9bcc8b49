r"""Does ``nim-async bench`` measure what ``vllm bench serve`` measures? (one run, same server)

Both tools run the same workload against the same server, one after the other:

* the same JPEG images (synthetic, one size, so every request has the same prompt tokens), each
  sent as a base64 ``data:`` URI in one user message ``[image_url, text]`` with the same prompt
  and no system prompt (``nim-async bench --task generic --prompt P``; for vLLM a
  ``custom_image`` JSONL file whose lines hold that exact ``content`` list);
* ``max_tokens`` fixed with ``ignore_eos`` and temperature 0, streamed with usage;
* a closed loop at the same concurrency (``--concurrency C`` / ``--max-concurrency C
  --request-rate inf``) over the same number of requests, with no warm-up request on either
  side, so the server's ``/metrics`` deltas around each run cover exactly that run's requests;
  instead, before the first run, one unmeasured request per image (:func:`prime`) fills vLLM's
  multimodal and prefix caches, which would otherwise favour whichever tool runs second.

It compares request throughput, output tokens/s, TTFT p50, TPOT p50 and ITL p50 (and the
means) and, as a third witness, the server's own histograms over each run (``/metrics``
deltas: mean TTFT, mean TPOT per request, mean E2E, request and token counts;
:data:`nim_async.bench.server_metrics.SERVER_METRICS`). A witness is valid only when the
server counted exactly this run's requests and tokens (nobody else used the server meanwhile).

Definitions, as read in both tools' code (vLLM 0.32.0,
``vllm/benchmarks/lib/endpoint_request_func.py`` ``async_request_openai_chat_completions`` and
``vllm/benchmarks/serve.py`` ``calculate_metrics``; ``nim_async/bench/metrics.py``):

==========  ===============================================  ================================
figure      vllm bench serve                                 nim-async bench
==========  ===============================================  ================================
TTFT        first chunk with ``choices`` (vLLM's role chunk,  first chunk with non-empty
            ``content: ""``) − send                           content − send
ITL         gap between consecutive ``choices`` chunks after  gap between consecutive content
            the first: n gaps for n tokens, the first being   chunks: n − 1 gaps
            role chunk → first token (~1 ms)
TPOT        (last ``choices`` chunk − send − TTFT) / (n − 1)  (end of stream − send − TTFT) /
                                                              (n − 1)
n           ``usage.completion_tokens``                       the same
duration    first send → last request done (all gathered)     first send → last request done
==========  ===============================================  ================================

So the two differ by design only in where the first token is taken (the role chunk comes
~1 ms before the first content chunk on vLLM) and in that one extra near-zero ITL sample per
request in vLLM's ITL list; the table also shows vLLM's ITL without that first gap.

Usage (defaults from the test tier's env file, ``/tmp/nim-async-test-env/vllm/env``)::

    .venv/bin/python benchmarks/bench_agreement.py --quick        # 32 requests, c=4, 32 tokens
    .venv/bin/python benchmarks/bench_agreement.py                # 128 requests, c=8, 64 tokens
    .venv/bin/python benchmarks/bench_agreement.py --url http://gpu-host:8000 \
        --vllm-bin vllm --tokenizer nvidia/Cosmos-Reason1-7B --model nvidia/cosmos-reason1-7b \
        --num-requests 512 --concurrency 32 --max-tokens 256 --image-size 1280x720

Exit status: 0 when every compared figure agrees within ``--tolerance`` (default 10 %), 1 when
one does not, 2 when a tool failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from nim_async.bench.images import parse_sizes, synthetic_images
from nim_async.bench.server_metrics import METRIC_PATHS, parse_prometheus, server_deltas

ENV_FILE = Path(os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")) / "vllm" / "env"
PROMPT = "Describe the coloured rectangles in this image."
ROOT = Path(__file__).resolve().parent.parent

# (key, label, nim-async summary path, vllm result key); percentiles and throughputs compared
COMPARED = (
    (
        "request_throughput",
        "request throughput (req/s)",
        ("request_throughput",),
        "request_throughput",
    ),
    ("output_throughput", "output tokens/s", ("output_token_throughput",), "output_throughput"),
    ("ttft_p50", "TTFT p50 (ms)", ("ttft_ms", "p50"), "median_ttft_ms"),
    ("tpot_p50", "TPOT p50 (ms)", ("tpot_ms", "p50"), "median_tpot_ms"),
    ("itl_p50", "ITL p50 (ms)", ("itl_ms", "p50"), "median_itl_ms"),
)
# shown, not gated: means (the server's histograms give means only)
SHOWN = (
    ("ttft_mean", "TTFT mean (ms)", ("ttft_ms", "mean"), "mean_ttft_ms", "ttft_ms"),
    ("tpot_mean", "TPOT mean (ms)", ("tpot_ms", "mean"), "mean_tpot_ms", "tpot_ms"),
    ("itl_mean", "ITL mean (ms)", ("itl_ms", "mean"), "mean_itl_ms", None),
    ("e2e_mean", "E2E mean (ms)", ("e2e_ms", "mean"), "mean_e2el_ms", "e2e_ms"),
)


def read_env(path: Path = ENV_FILE) -> dict[str, str]:
    """Read ``export KEY=VALUE`` lines of the test tier's env file (empty when absent)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, raw = line[len("export ") :].partition("=")
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    return values


BUCKETED = {
    "ttft": "time_to_first_token_seconds",
    "tpot": "request_time_per_output_token_seconds",
    "itl": "inter_token_latency_seconds",
}
"""Server histograms whose p50 is read from their buckets (vLLM >= 0.11: TPOT per request,
ITL per token)."""


def buckets(text: str) -> dict[str, dict[float, float]]:
    """``{figure: {upper bound s: cumulative count}}`` of :data:`BUCKETED`, summed over labels."""
    out: dict[str, dict[float, float]] = {k: {} for k in BUCKETED}
    for line in text.splitlines():
        if line.startswith("#") or "_bucket{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("}")
        for figure, base in BUCKETED.items():
            if name == base + "_bucket" or name.endswith(":" + base + "_bucket"):
                le = labels.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                out[figure][bound] = out[figure].get(bound, 0.0) + float(value.split()[0])
    return out


def bucket_p50(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The median (ms) of a histogram's delta, linear within its bucket (Prometheus' way)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    half = counts[-1] / 2.0
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= half:
            if bound == float("inf"):
                return lower * 1000.0
            inside = cum - below
            return (lower + (bound - lower) * ((half - below) / inside if inside else 0)) * 1000.0
        lower, below = bound, cum
    return None


def scrape(url: str) -> dict[str, Any] | None:
    """The server's Prometheus metrics (``/v1/metrics`` then ``/metrics``): parsed + buckets."""
    for path in METRIC_PATHS:
        try:
            response = httpx.get(url.rstrip("/") + path, timeout=10.0)
        except httpx.HTTPError:
            continue
        if response.status_code == 200 and response.text:
            parsed = parse_prometheus(response.text)
            if parsed:
                return {"values": parsed, "buckets": buckets(response.text)}
    return None


def witness(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    num_requests: int,
    max_tokens: int,
) -> dict[str, Any] | None:
    """The server's figures over one run, with ``valid``: it counted exactly this run."""
    if after is None:
        return None
    deltas = server_deltas(before["values"] if before else None, after["values"])
    if deltas is None:
        return None
    out: dict[str, Any] = dict(deltas)
    for figure in BUCKETED:
        out[f"{figure}_p50_ms"] = bucket_p50(
            (before or {}).get("buckets", {}).get(figure, {}), after["buckets"][figure]
        )
    out["valid"] = (
        deltas.get("requests") == num_requests
        and deltas.get("generation_tokens") == num_requests * max_tokens
    )
    return out


def write_workload(
    folder: Path, *, num_images: int, size: tuple[int, int], prompt: str, seed: int
) -> tuple[Path, Path]:
    """Write the images (for ``nim-async bench --image-dir``), vLLM's ``custom_image`` JSONL
    and the same as aiperf's ``single_turn`` JSONL (``aiperf-dataset.jsonl``).

    Returns:
        ``(image_dir, jsonl_path)``.
    """
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "vllm-dataset.jsonl"
    lines, aiperf_lines = [], []
    for i, image in enumerate(synthetic_images(num_images, [size], seed=seed)):
        (image_dir / f"scene-{i:03d}.jpg").write_bytes(image.data)
        uri = "data:image/jpeg;base64," + base64.b64encode(image.data).decode("ascii")
        content = [
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": prompt},
        ]
        lines.append(json.dumps({"content": content}))
        aiperf_lines.append(json.dumps({"text": prompt, "image": uri}))
    jsonl.write_text("\n".join(lines) + "\n")
    # the same requests for aiperf (--custom-dataset-type single_turn), for runs by hand
    (folder / "aiperf-dataset.jsonl").write_text("\n".join(aiperf_lines) + "\n")
    return image_dir, jsonl


def _run(cmd: list[str], log: Path, timeout: float) -> float:
    """Run ``cmd`` with its output in ``log``; return its wall seconds; raise on failure."""
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{tail}")
    return time.perf_counter() - t0


def prime(args: argparse.Namespace, jsonl: Path) -> int:
    """Send every workload request once, unmeasured, before the first tool runs.

    vLLM keeps a multimodal processor cache and a prefix cache (both on by default in its V1
    engine). Without this pass the first tool's run pays for processing each image and
    prefilling each prompt the first time, and the second tool's run finds them cached: the
    server's own TTFT was ~20 % lower in whichever run came second (measured in CI: 45.5 vs
    36.5 ms p50, nim-async first). Primed, both runs see the same warm caches.

    Returns:
        The number of requests sent (one per distinct image).
    """
    sent = 0
    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
        for line in jsonl.read_text().splitlines():
            if not line.strip():
                continue
            body = {
                "model": args.model,
                "messages": [{"role": "user", "content": json.loads(line)["content"]}],
                "max_tokens": 1,
                "temperature": 0,
            }
            response = client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(
                    f"priming request failed: {response.status_code} {response.text}"
                )
            sent += 1
    return sent


def run_nim(args: argparse.Namespace, image_dir: Path, work: Path) -> dict[str, Any]:
    """``nim-async bench --url`` (as ``python -m nim_async.bench``); its first load point."""
    out = work / "nim.json"
    cmd = [
        sys.executable, "-m", "nim_async.bench",
        "--url", args.url, "--model", args.model,
        "--image-dir", str(image_dir), "--task", "generic", "--prompt", args.prompt,
        "--concurrency", str(args.concurrency), "--num-requests", str(args.num_requests),
        "--warmup", "0", "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
        "--no-self-check", "--json", str(out),
    ]  # fmt: skip
    before = scrape(args.url)
    wall = _run(cmd, work / "nim.log", args.timeout)
    after = scrape(args.url)
    point: dict[str, Any] = json.loads(out.read_text())[0]
    return {
        "command": shlex.join(cmd),
        "wall_s": wall,
        "raw": point,
        "witness": witness(before, after, args.num_requests, args.max_tokens),
    }


def run_vllm(args: argparse.Namespace, jsonl: Path, work: Path) -> dict[str, Any]:
    """``vllm bench serve`` on the same workload; its saved (detailed) result."""
    cmd = [
        args.vllm_bin, "bench", "serve",
        "--backend", "openai-chat", "--base-url", args.url, "--endpoint", "/v1/chat/completions",
        "--model", args.model, "--tokenizer", args.tokenizer,
        "--dataset-name", "custom_image", "--dataset-path", str(jsonl),
        "--custom-output-len", str(args.max_tokens), "--ignore-eos", "--temperature", "0",
        "--num-prompts", str(args.num_requests), "--max-concurrency", str(args.concurrency),
        "--request-rate", "inf", "--num-warmups", "0", "--ready-check-timeout-sec", "0",
        "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--save-result", "--save-detailed", "--result-dir", str(work),
        "--result-filename", "vllm.json", "--disable-tqdm",
    ]  # fmt: skip
    before = scrape(args.url)
    wall = _run(cmd, work / "vllm.log", args.timeout)
    after = scrape(args.url)
    raw: dict[str, Any] = json.loads((work / "vllm.json").read_text())
    return {
        "command": shlex.join(cmd),
        "wall_s": wall,
        "raw": raw,
        "witness": witness(before, after, args.num_requests, args.max_tokens),
    }


def _get(data: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _vllm_itl_without_first(raw: dict[str, Any]) -> tuple[float | None, float | None]:
    """vLLM's ITL samples without each request's first gap (role chunk -> first token), ms."""
    gaps = [g * 1000.0 for itl in raw.get("itls") or [] for g in itl[1:]]
    if not gaps:
        return None, None
    return statistics.median(gaps), statistics.fmean(gaps)


def compare(nim: dict[str, Any], vllm: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The figures side by side: ``rows`` (gated), ``shown`` (means) and ``agree``."""
    rows = []
    nim_w, vllm_w = nim.get("witness") or {}, vllm.get("witness") or {}
    for key, label, nim_path, vllm_key in COMPARED:
        a, b = _get(nim["raw"], nim_path), _get(vllm["raw"], (vllm_key,))
        diff = abs(a - b) / max(abs(a), abs(b)) if a is not None and b is not None else None
        ok = diff is not None and diff <= tolerance
        bucketed = key.removesuffix("_p50") in BUCKETED
        rows.append(
            {
                "key": key,
                "label": label,
                "nim": a,
                "vllm": b,
                "diff": diff,
                "ok": ok,
                "server_nim_run": nim_w.get(f"{key}_ms") if bucketed else None,
                "server_vllm_run": vllm_w.get(f"{key}_ms") if bucketed else None,
            }
        )
    shown = []
    for key, label, nim_path, vllm_key, server_key in SHOWN:
        shown.append(
            {
                "key": key,
                "label": label,
                "nim": _get(nim["raw"], nim_path),
                "vllm": _get(vllm["raw"], (vllm_key,)),
                "server_nim_run": nim_w.get(server_key) if server_key else None,
                "server_vllm_run": vllm_w.get(server_key) if server_key else None,
            }
        )
    p50, mean = _vllm_itl_without_first(vllm["raw"])
    return {
        "rows": rows,
        "shown": shown,
        "vllm_itl_without_first_gap": {"p50": p50, "mean": mean},
        "agree": all(r["ok"] for r in rows),
        "tolerance": tolerance,
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table (plus the witnesses)."""
    cmp_ = result["comparison"]
    lines = [
        "| figure | nim-async bench | vllm bench serve | difference | within "
        f"{cmp_['tolerance']:.0%} | server p50, nim run / vllm run¹ |",
        "|---|---|---|---|---|---|",
    ]
    for r in cmp_["rows"]:
        diff = "—" if r["diff"] is None else f"{r['diff']:.1%}"
        server = (
            ""
            if r.get("server_nim_run") is None and r.get("server_vllm_run") is None
            else f"{_fmt(r.get('server_nim_run'))} / {_fmt(r.get('server_vllm_run'))}"
        )
        lines.append(
            f"| {r['label']} | {_fmt(r['nim'])} | {_fmt(r['vllm'])} | {diff} | "
            f"{'yes' if r['ok'] else '**no**'} | {server} |"
        )
    extra = cmp_["vllm_itl_without_first_gap"]
    lines.append(
        f"| ITL p50 (ms), vLLM without the role-chunk gap | | {_fmt(extra['p50'])} | | | |"
    )
    lines.append(
        "\n¹ from the server's histogram buckets over each run (linear within a bucket; "
        "vLLM's ITL buckets are 10, 25, 50, 75, 100 ms ..., so coarse)"
    )
    lines += [
        "",
        "| figure (means) | nim-async bench | server, nim run | vllm bench serve | "
        "server, vllm run |",
        "|---|---|---|---|---|",
    ]
    for s in cmp_["shown"]:
        lines.append(
            f"| {s['label']} | {_fmt(s['nim'])} | {_fmt(s['server_nim_run'])} | "
            f"{_fmt(s['vllm'])} | {_fmt(s['server_vllm_run'])} |"
        )
    agreement = result.get("server_agreement")
    if agreement:
        lines += [
            "",
            "| client / server, over its own run | TTFT mean | TPOT mean | E2E mean | "
            "req/s vs c / E2E |",
            "|---|---|---|---|---|",
        ]
        for name, label in (("nim", "nim-async bench"), ("vllm", "vllm bench serve")):
            a = agreement[name]
            cells = " | ".join(
                "—" if a.get(k) is None else f"{a[k]:.3f}"
                for k in ("ttft", "tpot", "e2e", "throughput")
            )
            lines.append(f"| {label} | {cells} |")
    change = result.get("server_change")
    if change is not None:
        lines.append(f"\nthe server's own E2E mean in the vllm run vs the nim run: {change:+.1%}")
    for name in ("nim", "vllm"):
        w = result[name].get("witness")
        if w is None:
            lines.append(f"\nserver metrics over the {name} run: not scraped")
            continue
        lines.append(
            f"\nserver over the {name} run: {w['requests']:.0f} requests, "
            f"{w['generation_tokens']:.0f} generated tokens, "
            f"{'valid' if w['valid'] else 'NOT valid (other traffic, or a miscount)'}"
        )
    return "\n".join(lines)


def server_agreement(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each tool against the server's own figures over that tool's run (client / server).

    ``tpot`` and ``e2e`` are the means of both; ``ttft`` too (the client's includes the upload
    and the API server's preprocessing, so it reads higher); ``throughput`` is the client's
    request rate against the server's by Little's law for a closed loop,
    ``concurrency / mean E2E``.
    """
    concurrency = result["workload"]["concurrency"]
    out: dict[str, dict[str, float | None]] = {}
    for name, means, rate_key in (
        ("nim", {"ttft": ("ttft_ms", "mean"), "tpot": ("tpot_ms", "mean"),
                 "e2e": ("e2e_ms", "mean")}, ("request_throughput",)),
        ("vllm", {"ttft": ("mean_ttft_ms",), "tpot": ("mean_tpot_ms",),
                  "e2e": ("mean_e2el_ms",)}, ("request_throughput",)),
    ):  # fmt: skip
        side = result[name]
        w = side.get("witness") or {}
        ratios: dict[str, float | None] = {}
        for fig, path in means.items():
            client, server = _get(side["raw"], path), w.get(f"{fig}_ms")
            ratios[fig] = client / server if client and server else None
        rate, e2e = _get(side["raw"], rate_key), w.get("e2e_ms")
        ratios["throughput"] = rate / (concurrency * 1000.0 / e2e) if rate and e2e else None
        ratios["valid"] = 1.0 if w.get("valid") else 0.0
        out[name] = ratios
    return out


def server_change(result: dict[str, Any]) -> float | None:
    """How much slower the server itself was in the vllm run than in the nim run (E2E means)."""
    a = (result["nim"].get("witness") or {}).get("e2e_ms")
    b = (result["vllm"].get("witness") or {}).get("e2e_ms")
    return b / a - 1.0 if a and b else None


def judge(result: dict[str, Any]) -> list[str]:
    """For each figure that disagrees, what the server's own histograms say about it."""
    notes = []
    tol = result["comparison"]["tolerance"]
    change = server_change(result)
    witness = result["server_agreement"]
    valid = all(witness[n].get("valid") for n in ("nim", "vllm"))
    fig_of = {"request_throughput": "throughput", "output_throughput": "throughput",
              "ttft_p50": "ttft", "tpot_p50": "tpot", "itl_p50": "tpot"}  # fmt: skip
    for r in result["comparison"]["rows"]:
        if r["ok"]:
            continue
        fig = fig_of[r["key"]]
        a, b = witness["nim"].get(fig), witness["vllm"].get(fig)
        sn, sv = r.get("server_nim_run"), r.get("server_vllm_run")
        if sn and sv and r["nim"] and r["vllm"]:  # the server's own p50 (histogram buckets)
            a, b = r["nim"] / sn, r["vllm"] / sv
        if not valid or a is None or b is None or change is None:
            notes.append(f"{r['label']}: disagree; no valid server witness to judge by")
            continue
        if abs(change) > tol and abs(a - b) <= tol:
            how = f"{abs(change):.0%} {'slower' if change > 0 else 'faster'}"
            notes.append(
                f"{r['label']}: disagree, but the server itself was {how} (its E2E mean) in "
                f"the vllm run; against the server over its own run nim-async reads "
                f"{a:.2f}x, vllm bench {b:.2f}x: the load changed, not the tools"
            )
        else:
            closer = "nim-async bench" if abs(a - 1) < abs(b - 1) else "vllm bench serve"
            notes.append(
                f"{r['label']}: disagree; client/server over its own run: nim-async {a:.2f}x, "
                f"vllm bench {b:.2f}x -> the server sides with {closer}"
            )
    return notes


def server_sides_with_nim(row: dict[str, Any], coarse: float = 0.25) -> bool:
    """Whether the server's own p50 (buckets) takes nim-async's side on a disagreeing figure.

    True when nim-async's value is at least as close to the server's p50 over its run as vLLM
    bench's is to the server's over its run, and within ``coarse`` of it (bucket edges are
    coarse: linear interpolation inside a 10-25 ms bucket, say).
    """
    sn, sv, a, b = row.get("server_nim_run"), row.get("server_vllm_run"), row["nim"], row["vllm"]
    if not (sn and sv and a and b):
        return False
    off_nim, off_vllm = abs(a / sn - 1), abs(b / sv - 1)
    return off_nim <= off_vllm and off_nim <= coarse


WITNESSED = {"ttft_p50": "ttft", "tpot_p50": "tpot"}
"""Compared rows whose figure the server measures too (its mean over each run)."""


def server_explains(row: dict[str, Any], result: dict[str, Any], tolerance: float) -> bool:
    """Whether the server itself moved on a disagreeing figure, and both tools moved with it.

    True when both witnesses counted exactly their run, the server's own mean of the figure
    differs between the two runs by more than half the tolerance, and each tool's mean over
    the server's own over its run agrees between the tools within the tolerance: the tools
    measure the same thing, on a server that was not the same in both runs (CI saw the
    server's TTFT mean 49.4 ms in one run and 40.2 ms in the other while its E2E moved 2.6 %).
    """
    figure = WITNESSED.get(row["key"])
    agreement = result.get("server_agreement") or {}
    nim_w = result["nim"].get("witness") or {}
    vllm_w = result["vllm"].get("witness") or {}
    if figure is None or not (nim_w.get("valid") and vllm_w.get("valid")):
        return False
    a, b = nim_w.get(f"{figure}_ms"), vllm_w.get(f"{figure}_ms")
    ra = (agreement.get("nim") or {}).get(figure)
    rb = (agreement.get("vllm") or {}).get(figure)
    if not (a and b and ra and rb):
        return False
    moved = abs(b / a - 1) > tolerance / 2
    return moved and abs(ra - rb) / max(ra, rb) <= tolerance


def medians_of_few(row: dict[str, Any], result: dict[str, Any], tolerance: float) -> bool:
    """Whether a disagreeing TTFT / TPOT p50 is the sampling of a median over few requests.

    ``--quick`` has 32 requests, so TTFT and TPOT p50 are medians of 32 per-request values, and
    on the 2-core CPU server their distribution is bimodal (a request that overlapped another's
    prefill, or not): the median jumps between the modes while the mean holds (CI: TPOT p50
    8.91 vs 7.78 ms, means 8.96 vs 9.26 ms). True when the tools' means of the figure agree
    within half the tolerance and each tool's mean over the server's own over its run agrees
    between the tools within the tolerance (both witnesses valid).
    """
    figure = WITNESSED.get(row["key"])
    if figure is None:
        return False
    means = {r["key"]: r for r in result["comparison"].get("shown", [])}.get(f"{figure}_mean")
    agreement = result.get("server_agreement") or {}
    nim, vllm = agreement.get("nim") or {}, agreement.get("vllm") or {}
    if not (means and means["nim"] and means["vllm"] and nim.get("valid") and vllm.get("valid")):
        return False
    ra, rb = nim.get(figure), vllm.get(figure)
    if not (ra and rb):
        return False
    close = abs(means["nim"] - means["vllm"]) / max(means["nim"], means["vllm"]) <= tolerance / 2
    return close and abs(ra - rb) / max(ra, rb) <= tolerance


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (defaults from the test tier's env file)."""
    env = read_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=env.get("NIM_VLLM_URL"), help="the server")
    parser.add_argument("--model", default=env.get("NIM_VLLM_MODEL", "cosmos-reason1-7b"))
    parser.add_argument("--vllm-bin", default=env.get("NIM_VLLM_BIN", "vllm"))
    parser.add_argument(
        "--tokenizer", default=env.get("NIM_VLLM_MODEL_DIR"), help="for vllm bench (HF id/dir)"
    )
    parser.add_argument("--num-requests", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--image-size", default="320x240")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=("nim-first", "vllm-first"), default="nim-first")
    parser.add_argument(
        "--no-prime",
        action="store_true",
        help="skip the unmeasured pass that warms the server's image and prefix caches",
    )
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--timeout", type=float, default=600.0, help="per tool run (s)")
    parser.add_argument("--workdir", help="keep the inputs, logs and raw results here")
    parser.add_argument("--json", dest="json_path", help="write the whole result here")
    parser.add_argument("--quick", action="store_true", help="32 requests, c=4, 32 tokens")
    args = parser.parse_args(argv)
    quick = args.quick
    args.num_requests = args.num_requests or (32 if quick else 128)
    args.concurrency = args.concurrency or (4 if quick else 8)
    args.max_tokens = args.max_tokens or (32 if quick else 64)
    if not args.url:
        parser.error("no --url and no test-tier env file (scripts/vllm-env.sh up)")
    if not args.tokenizer:
        parser.error("--tokenizer is needed by vllm bench serve")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both tools on the same workload and compare; returns the whole result."""
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (size,) = parse_sizes(args.image_size)
        image_dir, jsonl = write_workload(
            work, num_images=args.num_images, size=size, prompt=args.prompt, seed=args.seed
        )
        primed = 0 if args.no_prime else prime(args, jsonl)
        if args.order == "nim-first":
            nim = run_nim(args, image_dir, work)
            vllm = run_vllm(args, jsonl, work)
        else:
            vllm = run_vllm(args, jsonl, work)
            nim = run_nim(args, image_dir, work)
    for side in (nim, vllm):  # keep the summaries, not every per-request list
        raw = side["raw"]
        side["raw"] = {k: v for k, v in raw.items() if not isinstance(v, list)}
        if "itls" in raw:
            side["raw"]["itls"] = raw["itls"]
    result: dict[str, Any] = {
        "workload": {
            "url": args.url,
            "model": args.model,
            "num_requests": args.num_requests,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "images": f"{args.num_images} JPEG {args.image_size}",
            "prompt": args.prompt,
            "order": args.order,
            "primed_requests": primed,
        },
        "nim": nim,
        "vllm": vllm,
    }
    result["comparison"] = compare(nim, vllm, args.tolerance)
    result["server_agreement"] = server_agreement(result)
    result["server_change"] = server_change(result)
    result["judgement"] = judge(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write ``--json``; the exit status says whether they agree."""
    args = parse_args(argv)
    try:
        result = run(args)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"bench_agreement: a tool failed: {exc}", file=sys.stderr)
        return 2
    w = result["workload"]
    print(
        f"workload: {w['num_requests']} requests, concurrency {w['concurrency']}, "
        f"{w['max_tokens']} tokens (ignore_eos), {w['images']}, server {w['url']}"
    )
    print(table(result))
    for note in result["judgement"]:
        print(note)
    print(f"\nnim-async: {result['nim']['command']}\nvllm:      {result['vllm']['command']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1))
    return 0 if result["comparison"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
