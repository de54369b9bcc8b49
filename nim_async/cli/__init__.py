"""The ``nim-async`` command.

Subcommands: ``deploy``, ``stop``, ``ps``, ``predict``, ``batch``, ``emulate``,
``emulator-image``, ``bench`` and ``demo``; each has ``--help``. Commands that talk to a NIM take
``--url`` (or ``--host``/``--port``). Options mirror :class:`nim_async.NIMConfig` and
:class:`nim_async.NIMSamplingParams`.

User errors (any :class:`nim_async.errors.NIMError` or ``ValueError``) print one clear line on
stderr and exit with status 1; Ctrl-C exits with 130. Heavy modules are imported inside the
commands so that ``nim-async --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from rich.console import Console

    from nim_async.config import NIMConfig, NIMSamplingParams
    from nim_async.predict.predictor import AsyncNIMPredictor
    from nim_async.results import PredictionResponse

__all__ = ["build_parser", "iter_inputs", "main"]

PROG = "nim-async"
DEFAULT_MODEL = "cosmos-reason1-7b"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TASK_CHOICES = ("phrase-grounding", "vqa")
# Subcommands whose argument parsing belongs to another module: everything after the name is
# handed to that module's own ``main(argv)``.
DELEGATED = ("emulate", "bench")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- option groups


def _add_nim_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NIM server")
    group.add_argument(
        "--url",
        help="base URL of a running NIM, e.g. http://127.0.0.1:8000 (overrides --host/--port)",
    )
    group.add_argument("--host", default="127.0.0.1", help="NIM host (default: %(default)s)")
    group.add_argument("--port", type=int, default=8000, help="NIM port (default: %(default)s)")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="served model name, as /v1/models lists it (default: %(default)s)",
    )
    group.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    group.add_argument("--system-prompt", help="system prompt (default: the task's own)")
    group.add_argument(
        "--box-format",
        choices=("norm1024", "qwen25-abs", "norm1000"),
        help="box convention of the model (default: from the model name)",
    )
    group.add_argument(
        "--dialect",
        choices=("openai", "nvext", "auto"),
        default="openai",
        help="where sampling fields go in the request (default: %(default)s)",
    )


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        default="phrase-grounding",
        choices=TASK_CHOICES,
        help="task type (default: %(default)s)",
    )
    parser.add_argument("--prompt", help="user prompt (default: the task's own)")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (NIMSamplingParams; unset = the default)")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float)
    group.add_argument("--presence-penalty", type=float)
    group.add_argument("--frequency-penalty", type=float)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--max-tokens", type=int)
    group.add_argument("--min-tokens", type=int)
    group.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    group.add_argument("--seed", type=int)
    group.add_argument("--ignore-eos", action="store_true", default=None)
    group.add_argument("--logprobs", type=int)
    group.add_argument(
        "--guided-choice", action="append", help="allowed output (repeatable; guided decoding)"
    )
    group.add_argument("--guided-regex", help="regular expression the output must match")
    group.add_argument("--guided-json", help="JSON schema (text, or @file.json)")
    group.add_argument("--guided-grammar", help="EBNF grammar (text, or @file)")


_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "max_tokens",
    "min_tokens",
    "stop",
    "seed",
    "ignore_eos",
    "logprobs",
    "guided_choice",
    "guided_regex",
    "guided_json",
    "guided_grammar",
)


def _read_at_file(value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return value


def sampling_from_args(args: argparse.Namespace) -> NIMSamplingParams | None:
    """Build :class:`NIMSamplingParams` from the sampling options that were given.

    Args:
        args: Parsed arguments of a command with the sampling option group.

    Returns:
        The parameters, or ``None`` when no sampling option was given.

    Raises:
        ValueError: naming the field, for an out-of-range value.
    """
    given: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in ("guided_json", "guided_grammar"):
            value = _read_at_file(value)
        if name == "stop" and len(value) == 1:
            value = value[0]
        given[name] = value
    if not given:
        return None
    from nim_async.config import NIMSamplingParams

    return NIMSamplingParams(**given)


def _base_url(args: argparse.Namespace) -> str:
    url: str | None = args.url
    if url:
        if "://" not in url:
            raise ValueError(f"--url must look like http://HOST:PORT, got {url!r}")
        return url.rstrip("/")
    host: str = args.host
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{args.port}"


def _make_predictor(
    args: argparse.Namespace, *, task: str, max_connections: int = 16
) -> AsyncNIMPredictor:
    from nim_async.predict.predictor import AsyncNIMPredictor

    return AsyncNIMPredictor(
        model_name=args.model,
        task_type=task,
        base_url=_base_url(args),
        system_prompt=args.system_prompt,
        box_format=args.box_format,
        dialect=args.dialect,
        timeout=args.timeout,
        max_connections=max_connections,
    )


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# --------------------------------------------------------------------------- deploy / stop / ps


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deployment (NIMConfig; unset = the default)")
    group.add_argument(
        "--api-key",
        dest="nvidia_api_key",
        help="NGC API key (default: $NGC_API_KEY; prefer the variable, argv is visible to ps)",
    )
    group.add_argument("--image-name", help="NIM image name (default: cosmos-reason1-7b)")
    group.add_argument("--tag", help="image tag (default: latest)")
    group.add_argument("--registry", help="registry path (default: nvcr.io/nim/nvidia)")
    group.add_argument("--port", type=int, help="host port (default: 8000)")
    group.add_argument("--host", help="host address to publish on (default: 127.0.0.1)")
    group.add_argument("--shm-size", help="shared memory, Docker syntax (default: 32GB)")
    group.add_argument("--max-model-len", type=int, help="context length (default: 8192)")
    group.add_argument(
        "--cache-dir", dest="local_cache_dir", help="host cache dir (default: ~/.cache/nim)"
    )
    group.add_argument(
        "--no-reuse",
        dest="use_existing_container",
        action="store_false",
        default=None,
        help="do not reuse a running container of the same name",
    )
    group.add_argument(
        "--replace",
        dest="auto_kill_existing_container",
        action="store_true",
        default=None,
        help="remove an existing container of the same name first",
    )
    group.add_argument(
        "--no-logs",
        dest="stream_logs",
        action="store_false",
        default=None,
        help="do not stream container logs while waiting",
    )
    group.add_argument("--force-pull", action="store_true", default=None, help="always pull")
    group.add_argument("--run-id", help="Datature Vi run whose weights to deploy")
    group.add_argument("--ckpt", help="checkpoint of --run-id (default: latest)")
    group.add_argument("--model-save-path", help="where Vi models are saved (~/.vi/models)")
    group.add_argument("--model-path", help="local Hugging Face checkpoint directory to serve")
    group.add_argument("--served-model-name", help="name to serve the model as")
    group.add_argument(
        "--overwrite", action="store_true", default=None, help="re-download existing weights"
    )
    group.add_argument(
        "--gpus",
        help="'all', a count, comma-separated device ids, or 'none' (default: all)",
    )
    group.add_argument("--startup-timeout", type=float, help="seconds to wait for readiness")
    group.add_argument("--secret-key", help="Vi secret key (default: $DATATURE_VI_SECRET_KEY)")
    group.add_argument(
        "--organization-id", help="Vi organization (default: $DATATURE_VI_ORGANIZATION_ID)"
    )
    group.add_argument("--endpoint", help="Vi API base URL")


_CONFIG_FIELDS = (
    "nvidia_api_key",
    "image_name",
    "tag",
    "registry",
    "port",
    "host",
    "shm_size",
    "max_model_len",
    "local_cache_dir",
    "use_existing_container",
    "auto_kill_existing_container",
    "stream_logs",
    "force_pull",
    "run_id",
    "ckpt",
    "model_save_path",
    "model_path",
    "served_model_name",
    "overwrite",
    "gpus",
    "startup_timeout",
    "secret_key",
    "organization_id",
    "endpoint",
)


def _parse_gpus(value: str) -> str | int | list[str] | None:
    text = value.strip()
    if text.lower() == "none":
        return None
    if text.lower() == "all":
        return "all"
    if text.isdigit():
        return int(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def config_from_args(args: argparse.Namespace) -> NIMConfig:
    """Build :class:`NIMConfig` from the deployment options that were given.

    Raises:
        InvalidConfigError: naming the field, for an invalid value.
    """
    from nim_async.config import NIMConfig

    given: dict[str, Any] = {}
    for name in _CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "gpus":
            value = _parse_gpus(value)
        given[name] = value
    return NIMConfig(**given)


async def _cmd_deploy(args: argparse.Namespace) -> int:
    from nim_async.deploy.deployer import AsyncNIMDeployer

    config = config_from_args(args)
    async with AsyncNIMDeployer(config, quiet=args.quiet) as deployer:
        result = await deployer.deploy()
    if args.json:
        import orjson

        payload = result.model_dump(mode="json") | {"base_url": result.base_url}
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
        return EXIT_OK
    console = _console()
    verb = "Reusing" if result.reused else "Deployed"
    console.print(
        f"[green]{verb}[/green] {result.container_name} ({result.container_id[:12]}) "
        f"serving {result.served_model_name or config.image_name} at [bold]{result.base_url}[/]"
    )
    console.print(f"Stop it with: {PROG} stop {result.container_name}")
    return EXIT_OK


async def _cmd_stop(args: argparse.Namespace) -> int:
    from nim_async.deploy.deployer import AsyncNIMDeployer

    stopped = await AsyncNIMDeployer.stop(args.name, quiet=True)
    if stopped:
        if not args.quiet:
            _console().print(f"Stopped and removed {args.name}")
        return EXIT_OK
    if not args.quiet:
        _console(stderr=True).print(f"{PROG}: no container named {args.name!r} was running")
    return EXIT_FAILED


def _as_dict(item: object) -> dict[str, Any]:
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        data = dump(mode="json")
        if isinstance(data, dict):
            return data
    import dataclasses

    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    if isinstance(item, dict):
        return dict(item)
    return {"container": str(item)}


async def _cmd_ps(args: argparse.Namespace) -> int:
    from nim_async.deploy.deployer import AsyncNIMDeployer

    containers = [_as_dict(c) for c in await AsyncNIMDeployer.list()]
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(containers, default=str).decode() + "\n")
        return EXIT_OK
    console = _console()
    if not containers:
        console.print("No NIM containers managed by nim-async.")
        return EXIT_OK
    from rich.table import Table

    columns: list[str] = []
    for row in containers:
        for key in row:
            if key not in columns:
                columns.append(key)
    table = Table(title="NIM containers")
    for column in columns:
        table.add_column(column)
    for row in containers:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(table)
    return EXIT_OK


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- predict


def _response_payload(source: str, response: PredictionResponse) -> dict[str, Any]:
    payload: dict[str, Any] = {"source": source}
    payload.update(response.model_dump(mode="json"))
    payload["result"] = response.result
    return payload


def save_drawing(source: str, response: PredictionResponse, out: Path) -> Path:
    """Draw a phrase-grounding response onto its local image file and save it.

    Args:
        source: Path of the image the prediction was made on.
        response: The prediction (must be phrase grounding).
        out: Where to write the picture (format from the suffix).

    Returns:
        ``out``.

    Raises:
        ValueError: when the response has no boxes to draw or the image is not a local file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from nim_async.results import PhraseGroundingResponse

    if not isinstance(response, PhraseGroundingResponse):
        raise ValueError("--draw needs --task phrase-grounding (only groundings have boxes)")
    if "://" in source:
        raise ValueError("--draw needs a local image file, not a URL")
    try:
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot open {source} to draw on: {exc}") from None
    try:
        response.draw(image).save(out)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot write {out}: {exc}") from None
    return out


def _check_image_source(source: str) -> None:
    if "://" not in source and not Path(source).is_file():
        raise ValueError(f"no such image file: {source}")


async def _cmd_predict(args: argparse.Namespace) -> int:
    import orjson

    sampling = sampling_from_args(args)
    source: str = args.image
    _check_image_source(source)
    if (args.draw or args.coco) and args.task != "phrase-grounding":
        option = "--draw" if args.draw else "--coco"
        raise ValueError(f"{option} needs --task phrase-grounding (only groundings have boxes)")
    async with _make_predictor(args, task=args.task) as predictor:
        if args.json or args.no_stream:
            response = await predictor(source, user_prompt=args.prompt, sampling_params=sampling)
        else:
            async with predictor.stream(
                source, user_prompt=args.prompt, sampling_params=sampling
            ) as stream:
                async for token in stream:
                    sys.stdout.write(token)
                    sys.stdout.flush()
                response = await stream.get_final_response()
            sys.stdout.write("\n")
    if args.json:
        sys.stdout.write(orjson.dumps(_response_payload(source, response)).decode() + "\n")
    else:
        from nim_async.cli.demo import render_response

        render_response(_console(), response)
    if args.draw:
        out = save_drawing(source, response, Path(args.draw))
        if not args.json:
            _console().print(f"Annotated image written to [bold]{out}[/]")
    if args.coco:
        from nim_async.export import write_coco

        write_coco([(source, response)], Path(args.coco))
    return EXIT_OK


# --------------------------------------------------------------------------- batch


def iter_inputs(spec: str) -> Iterator[str]:
    """Yield the inputs of ``nim-async batch`` lazily.

    Args:
        spec: A directory (image files under it, recursively, in sorted order), a text file
            with one path or URL per line (blank lines and ``#`` comments skipped), or ``-``
            for such lines on stdin.

    Raises:
        ValueError: if ``spec`` is neither a directory nor a file.
    """
    if spec == "-":
        for line in sys.stdin:
            item = line.strip()
            if item and not item.startswith("#"):
                yield item
        return
    path = Path(spec)
    if path.is_dir():
        yield from _walk_images(path)
        return
    if not path.is_file():
        raise ValueError(f"DIR_OR_LIST: no such directory or file: {spec}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield str(path)
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            item = line.strip()
            if item and not item.startswith("#"):
                yield item


def _walk_images(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(dirpath, name)


def read_recorded(out: Path, *, drop_errors: bool = False) -> tuple[set[str], int]:
    """Read the sources already recorded in a results file, repairing a torn last line.

    A run killed mid-write can leave a partial last line; it is cut off so the file stays valid
    JSON Lines. With ``drop_errors`` the error records are removed (atomically) so those
    inputs run again.

    Args:
        out: The JSON Lines results file.
        drop_errors: Remove error records and do not count them as recorded.

    Returns:
        The recorded sources and how many error records were dropped.
    """
    import orjson

    if not out.exists():
        return set(), 0
    data = out.read_bytes()
    keep_end = data.rfind(b"\n") + 1
    if keep_end < len(data):
        with out.open("r+b") as handle:
            handle.truncate(keep_end)
        data = data[:keep_end]
    recorded: set[str] = set()
    kept: list[bytes] = []
    dropped = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "source" not in record:
            continue
        if drop_errors and record.get("status") != "ok":
            dropped += 1
            continue
        recorded.add(str(record["source"]))
        kept.append(line)
    if drop_errors and dropped:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, out)
    return recorded, dropped


def _prepare_out(out: Path, *, resume: bool, overwrite: bool, retry_errors: bool) -> set[str]:
    if out.exists() and out.stat().st_size > 0 and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds results; pass --resume to continue it or --overwrite to "
            "start again"
        )
    if overwrite and out.exists():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        return set()
    recorded, _ = read_recorded(out, drop_errors=retry_errors)
    return recorded


def _open_append(out: Path) -> BinaryIO:
    return out.open("ab")


async def _cmd_batch(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import time

    import orjson

    from nim_async.predict.batch import predict_many, result_record

    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    sampling = sampling_from_args(args)
    out = Path(args.out)
    if args.retry_errors and not args.resume:
        raise ValueError("--retry-errors only applies together with --resume")
    recorded = _prepare_out(
        out, resume=args.resume, overwrite=args.overwrite, retry_errors=args.retry_errors
    )
    # Fail early (one clear line) when DIR_OR_LIST is wrong, before connecting anywhere.
    probe = iter_inputs(args.inputs)
    try:
        first = next(probe)
    except StopIteration:
        first = None
    skipped = duplicates = 0
    started_sources: set[str] = set()
    # predict_many numbers what it is given; records carry the position in DIR_OR_LIST
    # instead, stable across --resume runs (only the inputs in flight are held here).
    positions: dict[int, int] = {}

    def pending_inputs() -> Iterator[str]:
        # Each source gets one line: those recorded by an earlier run, and repeats within
        # DIR_OR_LIST, are skipped.
        nonlocal skipped, duplicates
        if first is None:
            return
        for position, item in enumerate(_chain_one(first, probe)):
            if item in recorded:
                skipped += 1
                continue
            if item in started_sources:
                duplicates += 1
                continue
            started_sources.add(item)
            positions[len(started_sources) - 1] = position
            yield item

    ok = failed = 0
    failures: list[tuple[str, str]] = []
    started = time.perf_counter()
    err = _console(stderr=True)
    progress = not args.no_progress and sys.stderr.isatty()
    # For an ETA the bar needs a total: one extra lazy pass over a directory or list file.
    total = _count_pending(args.inputs, recorded) if progress and args.inputs != "-" else None
    interrupted = False
    with _open_append(out) as sink:
        try:
            async with (
                _make_predictor(
                    args, task=args.task, max_connections=args.concurrency
                ) as predictor,
                contextlib.aclosing(
                    predict_many(
                        predictor,
                        pending_inputs(),
                        concurrency=args.concurrency,
                        user_prompt=args.prompt,
                        sampling_params=sampling,
                        retries=args.retries,
                        ordered=args.ordered,
                        progress=progress,
                        total=total,
                    )
                ) as results,
            ):
                async for result in results:
                    record = result_record(result)
                    record["index"] = positions.pop(result.index, result.index)
                    sink.write(orjson.dumps(record) + b"\n")
                    sink.flush()
                    if result.ok:
                        ok += 1
                    else:
                        failed += 1
                        if len(failures) < 10:
                            failures.append((record["source"], record["error"]["message"]))
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C: asyncio.run cancels this task; the lines written so far are complete.
            interrupted = True
    elapsed = time.perf_counter() - started
    summary = (
        f"batch: {ok} ok, {failed} failed"
        + (f", {skipped} already recorded (skipped)" if args.resume else "")
        + (f", {duplicates} repeated inputs skipped" if duplicates else "")
        + f" in {elapsed:.1f} s -> {out}"
    )
    if args.coco:
        from nim_async.export import coco_from_jsonl

        count = coco_from_jsonl(out, Path(args.coco))
        err.print(f"COCO export: {count} images -> {args.coco}")
    if interrupted:
        err.print(f"{summary}\n[yellow]interrupted[/]; rerun with --resume to finish the rest")
        return EXIT_INTERRUPTED
    if failed:
        err.print(f"[red]{summary}[/]")
        for source, message in failures:
            err.print(f"  {source}: {message}", markup=False)
        if failed > len(failures):
            err.print(f"  ... and {failed - len(failures)} more (see {out})", markup=False)
        err.print("Rerun the failures with --resume --retry-errors")
        return EXIT_FAILED
    err.print(f"[green]{summary}[/]")
    return EXIT_OK


def _count_pending(spec: str, recorded: set[str]) -> int:
    seen: set[str] = set()
    for item in iter_inputs(spec):
        if item not in recorded:
            seen.add(item)
    return len(seen)


def _chain_one(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


# --------------------------------------------------------------------------- demo / image


async def _cmd_demo(args: argparse.Namespace) -> int:
    from nim_async.cli.demo import run_demo

    return await run_demo(
        url=args.url,
        out=Path(args.out),
        model=args.model,
        question=args.question,
        image=Path(args.image) if args.image else None,
        console=_console(),
    )


async def _cmd_emulator_image(args: argparse.Namespace) -> int:
    from nim_async.devtools.emulator_image import build_emulator_image

    image_id = await build_emulator_image(args.tag, quiet=args.quiet)
    if args.quiet:
        sys.stdout.write(image_id + "\n")
    else:
        _console().print(
            f"Built [bold]{args.tag}[/] ({image_id[:19]}): the NIM emulator for tests, not a model"
        )
    return EXIT_OK


def _delegate(command: str, argv: list[str]) -> int:
    if command == "emulate":
        from nim_async.emulator import cli as emulator_cli

        return int(emulator_cli.main(argv))
    from nim_async.bench import cli as bench_cli

    return int(bench_cli.main(argv))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nim-async`` argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Deploy NVIDIA NIM vision-language containers and run phrase grounding / VQA "
            f"against them. Start with `{PROG} demo` (no GPU needed)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("deploy", help="pull and start a NIM container, wait until it is ready")
    _add_config_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_cmd_deploy)

    p = sub.add_parser("stop", help="stop and remove a NIM container")
    p.add_argument("name", help="container name (served_model_name or image_name)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_cmd_stop)

    p = sub.add_parser("ps", help="list the NIM containers nim-async manages")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_ps)

    p = sub.add_parser("predict", help="run one prediction, streaming tokens to the terminal")
    p.add_argument("image", help="image path or URL")
    _add_task_arguments(p)
    p.add_argument("--json", action="store_true", help="print the full response as one JSON line")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    p.add_argument("--draw", metavar="OUT.png", help="write the image with boxes and labels")
    p.add_argument("--coco", metavar="OUT.json", help="write the grounding as COCO-style JSON")
    _add_nim_arguments(p)
    _add_sampling_arguments(p)
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "batch",
        help="score many images; one JSON line per input, resumable",
        description=(
            "Score every image of DIR_OR_LIST (a directory, a text file of paths/URLs, or '-' "
            "for stdin). Each input ends as one JSON line in --out, appended and flushed as it "
            "finishes; --resume skips inputs already recorded. Exits 1 if any input failed."
        ),
    )
    p.add_argument("inputs", metavar="DIR_OR_LIST", help="directory, list file, or '-'")
    _add_task_arguments(p)
    p.add_argument("--out", default="results.jsonl", help="JSON Lines output (%(default)s)")
    p.add_argument("--resume", action="store_true", help="skip inputs already in --out")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: drop error records from --out and run those inputs again",
    )
    p.add_argument("--overwrite", action="store_true", help="start --out afresh")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    p.add_argument("--retries", type=int, default=2, help="retries per input on 429/5xx (2)")
    p.add_argument("--ordered", action="store_true", help="write lines in input order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--coco", metavar="OUT.json", help="also export groundings as COCO JSON")
    _add_nim_arguments(p)
    _add_sampling_arguments(p)
    p.set_defaults(handler=_cmd_batch)

    sub.add_parser(
        "emulate",
        help="serve the NIM HTTP API from the embedded emulator (not a model); see emulate --help",
        add_help=False,
    )
    p = sub.add_parser(
        "emulator-image", help="build the emulator container image (for Docker tests)"
    )
    p.add_argument(
        "--tag", default="nim-async-emulator:latest", help="image reference (%(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the image id")
    p.set_defaults(handler=_cmd_emulator_image)

    sub.add_parser(
        "bench", help="load-test a NIM (or the emulator); see bench --help", add_help=False
    )

    p = sub.add_parser(
        "demo",
        help="the whole product on a laptop: emulator, grounding, VQA, annotated image",
        description=(
            "Without --url, start the embedded emulator in-process (an emulator, not a model), "
            "generate a sample image, run phrase grounding (streaming) and VQA on it, print the "
            "results and write the annotated image. With --url, use that NIM instead."
        ),
    )
    p.add_argument("--url", help="base URL of a real NIM (default: the embedded emulator)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="served model name (%(default)s)")
    p.add_argument("--out", default="nim-async-demo.png", help="annotated image (%(default)s)")
    p.add_argument("--image", help="use this image instead of the generated sample")
    p.add_argument(
        "--question",
        default="How many shapes are there?",
        help="VQA question (%(default)s)",
    )
    p.set_defaults(handler=_cmd_demo)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nim-async")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- entry point


def _one_line(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        parts = []
        for error in errors():
            loc = ".".join(str(p) for p in error.get("loc", ())) or "value"
            parts.append(f"{loc}: {str(error.get('msg', '')).removeprefix('Value error, ')}")
        return "invalid sampling parameters: " + "; ".join(parts)
    text = str(exc).strip() or type(exc).__name__
    return text


def _run(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    import asyncio

    result = asyncio.run(handler(args))
    return int(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nim-async`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 a failure (message on stderr), 2 usage, 130 Ctrl-C.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments and arguments[0] in DELEGATED:
            return _delegate(arguments[0], arguments[1:])
        args = build_parser().parse_args(arguments)
        return _run(args.handler, args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:
        from nim_async.errors import NIMError

        if isinstance(exc, NIMError | ValueError):
            sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
