r"""``nim-async bench`` / ``python -m nim_async.bench``: drive a NIM, vLLM or the emulator.

Examples::

    nim-async bench --quick --json out.json                  # emulator, small sweep
    nim-async bench --url http://gpu-host:8000 --task vqa --concurrency 1,8,32 \\
        --num-requests 200 --max-tokens 256 --json out.json --plot out.png
    nim-async bench --url http://gpu-host:8000 --request-rate 2,4,8 --arrival gamma \\
        --burstiness 0.5 --duration 60 --slo ttft=500,tpot=50
    nim-async bench --url http://gpu-host:8000 --concurrency 256 --workers 4   # 4 processes
    nim-async bench --url http://gpu-a:8000 --url http://gpu-b:8000 --concurrency 64  # 2 replicas

Without ``--url`` the emulator (a test double, not a model) is started in a child process with
the timing flags given here (``--ttft-ms``, ``--itl-ms``, ``--max-num-seqs`` ...).

``--url`` given more than once drives the endpoints as one service: each request goes to the
endpoint with the fewest requests in flight (:mod:`nim_async.bench.endpoints`), and the report
gives the set as a whole and each endpoint. With ``--workers N`` every worker gets every URL and
balances its own share of the load over them (see :mod:`nim_async.bench.workers`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from nim_async.bench.client import BenchClient, PreparedRequest, build_body
from nim_async.bench.emulator_proc import EmulatorProcess
from nim_async.bench.endpoints import (
    BALANCE,
    LeastOutstanding,
    add_endpoint_figures,
    check_url,
    fill_server,
)
from nim_async.bench.images import BenchImage, load_folder, parse_sizes, synthetic_images
from nim_async.bench.load import LoadResult, LoadSpec, Sender, run_load
from nim_async.bench.metrics import RequestRecord, parse_slo, summarize, summarize_values
from nim_async.bench.report import (
    BenchOutput,
    PlainOutput,
    write_csv,
    write_json,
    write_jsonl,
    write_plot,
)
from nim_async.bench.server_metrics import scrape

__all__ = ["CLIENT_BOUND_HEADROOM", "add_arguments", "main", "run"]

CLIENT_BOUND_HEADROOM = 3.0
"""Results are marked client-bound when the client's ceiling is less than this many times
the measured output-token rate."""

_EMULATOR_MODEL = "cosmos-reason1-7b"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,8,32, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be at least 1")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2.5,8, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def _url(text: str) -> str:
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to ``parser`` (used by ``nim-async bench``)."""
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        dest="urls",
        action="append",
        type=_url,
        metavar="URL",
        help="server URL (http://host:port); repeat it to drive several endpoints as one "
        f"service ({BALANCE} balancing, figures per endpoint too); without it the emulator "
        "is started",
    )
    target.add_argument("--model", help="served model name (default: first of /v1/models)")
    target.add_argument("--task", default="vqa", help="task whose prompt is sent (vqa, ...)")
    target.add_argument("--prompt", help="user prompt (default: the task's)")
    target.add_argument(
        "--api-key",
        default=os.environ.get("NIM_BENCH_API_KEY"),
        help="bearer token, if the server wants one (env NIM_BENCH_API_KEY)",
    )
    target.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=_int_list, help="fixed concurrency sweep: 1,8,32")
    load.add_argument("--request-rate", type=_float_list, help="arrival-rate sweep (req/s)")
    load.add_argument("--arrival", choices=("poisson", "gamma", "constant"), default="poisson")
    load.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape (<1 burstier, 1 = Poisson)"
    )
    load.add_argument("--max-concurrency", type=int, help="cap in flight for --request-rate")
    load.add_argument("--num-requests", type=int, help="measured requests per load point")
    load.add_argument("--duration", type=float, help="seconds of scheduling per load point")
    load.add_argument(
        "--warmup",
        type=int,
        help="unmeasured requests first (default: the concurrency up to 32; 4 for a rate)",
    )
    load.add_argument("--max-tokens", type=int, help="output tokens per request")
    load.add_argument(
        "--no-ignore-eos", action="store_true", help="let the model stop early (no ignore_eos)"
    )
    load.add_argument("--seed", type=int, default=0)
    load.add_argument(
        "--workers",
        type=int,
        help="spread the load over N processes (each its share of the concurrency or rate)",
    )
    load.add_argument("--worker-mode", action="store_true", help=argparse.SUPPRESS)

    images = parser.add_argument_group("images")
    images.add_argument("--image-dir", help="send the images of this folder")
    images.add_argument(
        "--image-sizes", help="synthetic image sizes, drawn uniformly: 640x480,1280x720"
    )
    images.add_argument("--num-images", type=int, help="how many synthetic images")
    images.add_argument(
        "--image-noise", type=float, default=0.35, help="0–1; larger = bigger JPEGs"
    )

    out = parser.add_argument_group("output")
    out.add_argument("--slo", help="goodput objectives in ms: ttft=500,tpot=50,e2e=5000")
    out.add_argument("--json", dest="json_path", help="aggregate JSON (one object per point)")
    out.add_argument("--jsonl", help="per-request JSON lines (default: beside --json)")
    out.add_argument("--csv", help="CSV, one row per load point (default: beside --json)")
    out.add_argument("--plot", help="PNG plots (needs the 'bench' extra: matplotlib)")
    out.add_argument("--no-self-check", action="store_true", help="skip the client ceiling check")
    out.add_argument("--self-check-seconds", type=float, help="length of the ceiling check")
    out.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")

    emu = parser.add_argument_group("emulator (only without --url)")
    emu.add_argument("--ttft-ms", type=float, help="emulator time to first token")
    emu.add_argument("--itl-ms", type=float, help="emulator inter-token latency")
    emu.add_argument("--max-num-seqs", type=int, help="emulator sequences at once (0 = no limit)")
    emu.add_argument("--prefill-ms-per-1k-tokens", type=float)
    emu.add_argument("--fail-rate", type=float, help="emulator injected failure rate")


def _resolve(args: argparse.Namespace) -> None:
    """Fill defaults, smaller ones for ``--quick``."""
    quick = args.quick

    def default(name: str, normal: Any, fast: Any) -> None:
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else normal)

    if args.concurrency is None and args.request_rate is None:
        args.concurrency = [1, 4] if quick else [1, 8, 32]
    if args.concurrency is not None and args.request_rate is not None:
        raise ValueError("give --concurrency or --request-rate, not both")
    if args.num_requests is None and args.duration is None:
        args.num_requests = 12 if quick else 100
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.urls and len(set(args.urls)) != len(args.urls):
        twice = sorted({u for u in args.urls if args.urls.count(u) > 1})
        raise ValueError(f"--url given twice: {', '.join(twice)}")
    default("max_tokens", 128, 16)
    default("num_images", 32, 4)
    default("image_sizes", "640x480,1024x768,1280x720", "320x240")
    default("self_check_seconds", 3.0, 1.0)
    if not args.urls:
        default("ttft_ms", 50.0, 20.0)
        default("itl_ms", 10.0, 2.0)


def _emulator_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in ("ttft_ms", "itl_ms", "max_num_seqs", "prefill_ms_per_1k_tokens", "fail_rate"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def _images(args: argparse.Namespace) -> list[BenchImage]:
    if args.image_dir:
        return load_folder(args.image_dir, limit=args.num_images)
    return synthetic_images(
        args.num_images, parse_sizes(args.image_sizes), seed=args.seed, noise=args.image_noise
    )


def _bodies(
    args: argparse.Namespace, images: list[BenchImage], model: str
) -> list[PreparedRequest]:
    return [
        build_body(
            img.data,
            mime=img.mime,
            model=model,
            task_type=args.task,
            max_tokens=args.max_tokens,
            prompt=args.prompt,
            ignore_eos=not args.no_ignore_eos,
        )
        for img in images
    ]


async def _model_name(clients: Sequence[BenchClient]) -> str | None:
    """The first model ``/v1/models`` lists, asking each endpoint in turn until one answers."""
    for client in clients:
        status, text = await client.get_text("/v1/models")
        if status != 200:
            continue
        try:
            data = orjson.loads(text)
            return str(data["data"][0]["id"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            continue
    return None


async def _scrape_all(clients: Sequence[BenchClient]) -> list[dict[str, float] | None]:
    return list(await asyncio.gather(*(scrape(c.get_text) for c in clients)))


def _done_line(point: dict[str, Any]) -> str:
    if point["concurrency"]:
        load = f"c={point['concurrency']}"
    else:
        load = f"{point['request_rate']:g} req/s"
    text = (
        f"done: {load} {point['completed']}/{point['num_requests']} ok, "
        f"{point['output_token_throughput']:,.0f} tok/s"
    )
    if point.get("endpoints"):
        text += (
            " ("
            + ", ".join(
                f"{e['url']}: {e['completed']}/{e['num_requests']} ok" for e in point["endpoints"]
            )
            + ")"
        )
    return text


def _client_figures(result: LoadResult, point: dict[str, Any]) -> dict[str, Any]:
    tokens = point["output_tokens"]
    lag = summarize_values(result.loop_lag, scale=1000.0)
    return {
        "cpu_s": result.cpu_s,
        "cpu_us_per_token": (result.cpu_s / tokens * 1e6) if tokens else None,
        "loop_lag_ms": {
            "p50": lag["p50"],
            "p99": lag["p99"],
            "max": max(result.loop_lag) * 1000.0 if result.loop_lag else None,
        },
        "late_arrivals": result.late_arrivals,
    }


def _headroom(point: dict[str, Any], ceiling: float | None) -> dict[str, Any]:
    """The client's ceiling against the measured token rate, and whether it bounded the run."""
    if ceiling is None or not point["output_token_throughput"] > 0:
        return {"ceiling_tokens_per_s": ceiling, "headroom": None, "client_bound": None}
    headroom = ceiling / point["output_token_throughput"]
    return {
        "ceiling_tokens_per_s": ceiling,
        "headroom": headroom,
        "client_bound": headroom < CLIENT_BOUND_HEADROOM,
    }


async def _self_check(
    args: argparse.Namespace, images: list[BenchImage], console: BenchOutput
) -> float | None:
    """Measure the client's output-token ceiling against a zero-delay emulator."""
    concurrency = max(args.concurrency or [args.max_concurrency or 64])
    bodies = _bodies(args, images, _EMULATOR_MODEL)
    async with EmulatorProcess({}) as emu:
        client = BenchClient(emu.url, max_connections=concurrency, timeout=args.timeout)
        try:
            spec = LoadSpec(
                concurrency=concurrency,
                num_requests=None,
                duration=args.self_check_seconds,
                warmup=concurrency,
                seed=args.seed,
            )
            result = await run_load(client, bodies, spec)
        finally:
            await client.aclose()
    point = summarize(result.records, concurrency=concurrency, duration=result.duration)
    if point["completed"] == 0:
        console.line("self-check: no request completed; ceiling unknown", "warning")
        return None
    ceiling = float(point["output_token_throughput"])
    console.line(
        f"self-check: client ceiling {ceiling:,.0f} output tokens/s at concurrency "
        f"{concurrency} against the zero-delay emulator (a lower bound: the emulator "
        "shares this machine)"
    )
    return ceiling


async def _run_points(
    args: argparse.Namespace,
    urls: Sequence[str],
    images: list[BenchImage],
    ceiling: float | None,
    console: BenchOutput,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], RequestRecord, float]]]:
    slo = parse_slo(args.slo)
    points: list[dict[str, Any]] = []
    all_records: list[tuple[dict[str, Any], RequestRecord, float]] = []
    loads: list[tuple[int | None, float | None]] = (
        [(c, None) for c in args.concurrency]
        if args.concurrency
        else [(None, r) for r in args.request_rate]
    )
    # each endpoint's pool holds the whole load: all of it goes to one when the others are down
    pool = max(c or args.max_concurrency or 256 for c, _ in loads)
    clients = [
        BenchClient(url, max_connections=pool, timeout=args.timeout, api_key=args.api_key)
        for url in urls
    ]
    balancer = LeastOutstanding(clients) if len(clients) > 1 else None
    sender: Sender = balancer if balancer is not None else clients[0]
    try:
        model = args.model or await _model_name(clients) or _EMULATOR_MODEL
        bodies = _bodies(args, images, model)
        for concurrency, rate in loads:
            warmup = args.warmup if args.warmup is not None else min(concurrency or 4, 32)
            spec = LoadSpec(
                concurrency=concurrency,
                request_rate=rate,
                arrival=args.arrival,
                burstiness=args.burstiness,
                max_concurrency=args.max_concurrency,
                num_requests=args.num_requests,
                duration=args.duration,
                warmup=warmup,
                seed=args.seed,
            )
            marks: list[tuple[list[int], list[float]]] = []
            before: list[dict[str, float] | None] = []

            async def measuring(
                marks: list[tuple[list[int], list[float]]] = marks,
                before: list[dict[str, float] | None] = before,
            ) -> None:
                # after the warm-up, as the --workers parent does: the server's deltas cover
                # exactly the measured requests
                before.extend(await _scrape_all(clients))
                if balancer is not None:
                    marks.append(balancer.counters())

            result = await run_load(sender, bodies, spec, before_measure=measuring)
            after = await _scrape_all(clients)
            point = summarize(
                result.records,
                concurrency=concurrency,
                request_rate=rate,
                duration=result.duration,
                slo=slo,
            )
            point["model"] = model
            point["url"] = urls[0]
            point["max_tokens"] = args.max_tokens
            point["arrival"] = args.arrival if rate is not None else None
            point["client"] = _client_figures(result, point) | _headroom(point, ceiling)
            if balancer is not None:
                times, seconds = balancer.since(marks[0])
                add_endpoint_figures(
                    point, result.records, urls, slo=slo, marked_down=times, down_s=seconds
                )
            fill_server(point, before, after)
            points.append(point)
            labels = {"concurrency": concurrency, "request_rate": rate}
            all_records.extend((labels, r, result.origin) for r in result.records)
            console.line(_done_line(point))
    finally:
        for client in clients:
            await client.aclose()
    return points, all_records


async def _run_points_workers(
    args: argparse.Namespace,
    urls: Sequence[str],
    ceiling: float | None,
    console: BenchOutput,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], RequestRecord, float]]]:
    from nim_async.bench.workers import run_workers

    loads: list[tuple[int | None, float | None]] = (
        [(c, None) for c in args.concurrency]
        if args.concurrency
        else [(None, r) for r in args.request_rate]
    )
    specs = [
        {
            "concurrency": c,
            "request_rate": r,
            "arrival": args.arrival,
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "num_requests": args.num_requests,
            "duration": args.duration,
            "warmup": args.warmup if args.warmup is not None else min(c or 4, 32),
            "seed": args.seed,
        }
        for c, r in loads
    ]
    clients = [
        BenchClient(url, max_connections=4, timeout=args.timeout, api_key=args.api_key)
        for url in urls
    ]
    try:
        model = args.model or await _model_name(clients) or _EMULATOR_MODEL

        async def before() -> Any:
            return await _scrape_all(clients)

        async def after(snapshot: Any, point: dict[str, Any]) -> None:
            fill_server(point, snapshot, await _scrape_all(clients))

        console.line(f"{args.workers} worker processes")
        points, records = await run_workers(
            args,
            urls,
            model,
            specs,
            count=args.workers,
            ceiling=ceiling,
            headroom_bound=CLIENT_BOUND_HEADROOM,
            slo=parse_slo(args.slo),
            scrape_before=before,
            scrape_after=after,
        )
    finally:
        for client in clients:
            await client.aclose()
    for point in points:
        point["model"] = model
        if len(urls) == 1:
            point["url"] = urls[0]
        point["max_tokens"] = args.max_tokens
        point["arrival"] = args.arrival if point["request_rate"] is not None else None
        console.line(
            f"{_done_line(point)} over {args.workers} workers"
            + (" (PARTIAL)" if point["partial"] else "")
        )
    return points, records


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any request, an output path that cannot be written at the end.

    Raises:
        ValueError: An output's folder does not exist or is not writable (names the option).
    """
    outputs = {
        "--json": args.json_path,
        "--jsonl": args.jsonl,
        "--csv": args.csv,
        "--plot": args.plot,
    }
    for option, value in outputs.items():
        if not value:
            continue
        folder = Path(value).expanduser().parent
        if not folder.is_dir():
            raise ValueError(
                f"{option} {value}: the folder {folder} does not exist; create it first "
                "(the results are written after the whole run)"
            )
        if not os.access(folder, os.W_OK):
            raise ValueError(f"{option} {value}: the folder {folder} is not writable")


async def run(args: argparse.Namespace, output: BenchOutput | None = None) -> int:
    """Run the suite with parsed ``args``; return the process exit code.

    Args:
        args: Parsed arguments (see :func:`add_arguments`).
        output: Where progress lines and the table go (default: plain text on stdout).

    Returns:
        0 on success, 1 when no request of any load point completed or a ``--workers``
        worker died (the figures are partial), 2 on bad options.
    """
    console = output if output is not None else PlainOutput()
    try:
        _resolve(args)
        _check_outputs(args)
        images = _images(args)
        parse_slo(args.slo)
    except (ValueError, OSError) as exc:
        console.line(f"error: {exc}", "error")
        return 2
    sizes = [len(i.data) for i in images]
    console.line(
        f"{len(images)} images, mean {sum(sizes) / len(sizes) / 1024:,.0f} KB; "
        f"task {args.task}; max_tokens {args.max_tokens}"
    )
    ceiling = None
    if not args.no_self_check:
        ceiling = await _self_check(args, images, console)
    if args.urls:
        if len(args.urls) > 1:
            console.line(
                f"{len(args.urls)} endpoints as one service, {BALANCE}: each request goes to "
                "the endpoint with the fewest requests in flight from this client"
                + (" (each worker balances its own share)" if args.workers else "")
            )
        if args.workers:
            points, records = await _run_points_workers(args, args.urls, ceiling, console)
        else:
            points, records = await _run_points(args, args.urls, images, ceiling, console)
    else:
        settings = _emulator_settings(args)
        console.line(f"starting the emulator (a test double, not a model): {settings}")
        async with EmulatorProcess(settings) as emu:
            if args.workers:
                points, records = await _run_points_workers(args, [emu.url], ceiling, console)
            else:
                points, records = await _run_points(args, [emu.url], images, ceiling, console)
    console.table(points)
    if args.json_path:
        base = Path(args.json_path)
        write_json(base, points)
        write_jsonl(args.jsonl or base.with_suffix(".requests.jsonl"), records)
        write_csv(args.csv or base.with_suffix(".csv"), points)
        console.line(f"wrote {base}")
    else:
        if args.jsonl:
            write_jsonl(args.jsonl, records)
        if args.csv:
            write_csv(args.csv, points)
    if args.plot:
        try:
            write_plot(args.plot, points, records)
        except RuntimeError as exc:
            console.line(str(exc), "warning")
        else:
            console.line(f"wrote {args.plot}")
    if any(p.get("partial") for p in points):
        return 1
    return 0 if any(p["completed"] for p in points) else 1


def main(argv: list[str] | None = None, output: BenchOutput | None = None) -> int:
    """Parse ``argv`` and run the suite (``python -m nim_async.bench``, ``nim-async bench``).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        output: Where progress lines and the table go (default: plain text on stdout).
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--worker-mode"]:
        from nim_async.bench.workers import worker_main

        return worker_main()
    parser = argparse.ArgumentParser(
        prog="nim-async bench",
        description="Benchmark a NIM / vLLM server (or the emulator) with concurrent requests.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker_mode:
        parser.error("--worker-mode is the --workers children's mode; it takes no other options")
    try:
        return asyncio.run(run(args, output))
    except KeyboardInterrupt:
        return 130
