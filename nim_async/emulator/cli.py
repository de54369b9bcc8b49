"""Command line of the NIM emulator: ``nim-async emulate`` / ``python -m nim_async.emulator``.

The emulator is a NIM-compatible test double, not a model. As a container entrypoint it honours
the NIM environment contract: ``NIM_SERVER_PORT``, ``NIM_SERVED_MODEL_NAME``,
``NIM_MAX_MODEL_LEN``, ``NIM_MODEL_NAME`` (custom weights directory with ``config.json``) and
``NIM_CACHE_PATH`` (must be writable). Logs go to stdout; SIGTERM exits 0 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
import tempfile
from typing import Any

from nim_async.catalog import BOX_FORMATS, box_format_for_model
from nim_async.emulator.geometry import VISION_FAMILIES
from nim_async.emulator.server import Emulator, EmulatorStartupError
from nim_async.emulator.settings import FIELD_SOURCES, EmulatorSettings

__all__ = ["DESCRIPTION", "add_arguments", "build_settings", "main", "run"]

log = logging.getLogger("nim_async.emulator")

DESCRIPTION = (
    "Run the nim-async NIM emulator: a NIM-compatible HTTP server (health, models, metadata, "
    "metrics, chat completions with SSE streaming) that needs no GPU and no NGC key. It is a "
    "test double, NOT a model: it finds solid-colour regions in images with Pillow and answers "
    "phrase grounding and simple VQA from them."
)

EPILOG = """\
environment (NIM container contract; command-line options win):
  NIM_SERVER_PORT        port to listen on (default 8000)
  NIM_SERVED_MODEL_NAME  served model name (default cosmos-reason1-7b)
  NIM_MAX_MODEL_LEN      context length (default 8192)
  NIM_MODEL_NAME         custom weights directory; its config.json is read and reported as the
                         model root; the emulator exits 1 when it is missing
  NIM_CACHE_PATH         cache directory (default /opt/nim/.cache); when set (or with
                         --nim-container, or when running as PID 1) it must be writable, else
                         the emulator logs "Permission denied" and exits 1

exit status: 0 after SIGTERM/SIGINT, 1 on a start-up failure or when --exit-after fires.
"""

DEFAULT_CACHE_PATH = "/opt/nim/.cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every emulator option to ``parser`` (used by ``nim-async emulate`` too).

    Args:
        parser: The parser or sub-parser to extend.
    """
    parser.description = parser.description or DESCRIPTION
    parser.epilog = parser.epilog or EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    srv = parser.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default $NIM_SERVER_PORT or 8000; 0 picks a free port)",
    )
    srv.add_argument(
        "--served-model-name",
        default=None,
        help="model id served at /v1/models (default $NIM_SERVED_MODEL_NAME or cosmos-reason1-7b)",
    )
    srv.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="context length; longer prompts get 400 (default $NIM_MAX_MODEL_LEN or 8192)",
    )
    srv.add_argument(
        "--model-path",
        default=None,
        help="custom weights directory holding config.json, reported as the model root "
        "(default $NIM_MODEL_NAME)",
    )
    srv.add_argument(
        "--cache-path",
        default=None,
        help=f"NIM cache directory checked for write access (default $NIM_CACHE_PATH or "
        f"{DEFAULT_CACHE_PATH})",
    )
    srv.add_argument(
        "--nim-container",
        action="store_true",
        help="behave as the NIM container entrypoint: require a writable cache directory",
    )
    srv.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level of the stdout log (default INFO)",
    )
    out = parser.add_argument_group("emulated output")
    out.add_argument(
        "--box-format",
        choices=BOX_FORMATS,
        default=None,
        help="box coordinates emitted: qwen25-abs (pixels of the 28-multiple resized input, "
        "Qwen2.5-VL / cosmos-reason1), norm1000 (Qwen3-VL), norm1024 (models trained on Vi); "
        "default chosen from the served model name",
    )
    out.add_argument(
        "--sampling-fields",
        choices=FIELD_SOURCES,
        default=None,
        help="where sampling fields are read: both (top-level and nvext), openai (top-level "
        "only; nvext ignored, as vLLM does), nvext (vLLM extensions only under nvext, NIM 1.x); "
        "default openai, or both with --legacy-guided",
    )
    out.add_argument(
        "--legacy-guided",
        action="store_true",
        help="behave as vLLM < 0.12 / NIM 1.x: enforce top-level guided_* fields and read nvext "
        "(default: vLLM 0.32, which ignores both; structured_outputs and response_format are "
        "always enforced)",
    )
    out.add_argument(
        "--ignore-guided",
        action="store_true",
        help="ignore guided_* fields everywhere, also in legacy mode and inside nvext "
        "(structured_outputs and response_format stay honoured)",
    )
    out.add_argument(
        "--reasoning", action="store_true", help="prefix every answer with <think>...</think>"
    )
    out.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="vision pixel budget for image tokens and qwen25-abs boxes (default: the model's "
        "vision family: 1003520 for Qwen2.5-VL, 16777216 for Qwen3-VL / cosmos-reason2)",
    )
    out.add_argument(
        "--vision",
        choices=VISION_FAMILIES,
        default=None,
        help="vision processor to follow for image and video tokens (default: from the served "
        "model name: qwen3-vl for cosmos-reason2, else qwen2.5-vl)",
    )
    out.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the emulator's own randomness (fault injection)",
    )
    timing = parser.add_argument_group("timing model")
    timing.add_argument(
        "--startup-seconds",
        type=float,
        default=0.0,
        help="seconds /v1/health/ready answers 503 after start (default 0)",
    )
    timing.add_argument(
        "--ttft-ms", type=float, default=0.0, help="time to first token in ms (default 0)"
    )
    timing.add_argument(
        "--itl-ms", type=float, default=0.0, help="inter-token latency in ms (default 0)"
    )
    timing.add_argument(
        "--max-num-seqs",
        type=int,
        default=0,
        help="sequences generated at once; the rest queue and show in "
        "vllm:num_requests_waiting (default 0 = unlimited)",
    )
    timing.add_argument(
        "--prefill-ms-per-1k-tokens",
        type=float,
        default=0.0,
        help="extra time to first token per 1000 prompt tokens, in ms (default 0)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="probability that a chat request fails with --fail-status (default 0)",
    )
    faults.add_argument(
        "--fail-status",
        type=int,
        choices=(429, 500, 503),
        default=503,
        help="HTTP status of injected failures (default 503)",
    )
    faults.add_argument(
        "--disconnect-after",
        type=int,
        default=None,
        metavar="N",
        help="drop the connection after N streamed chunks (a longer non-streaming answer is "
        "dropped before it is sent)",
    )
    faults.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="S",
        help="the process dies (exit status 1) S seconds after start",
    )


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise EmulatorStartupError(f"{name}={raw!r} is not an integer") from None


def _is_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.path.isdir(value)


def build_settings(args: argparse.Namespace) -> tuple[EmulatorSettings, str, int]:
    """Turn parsed options plus the NIM environment into settings, host and port.

    Args:
        args: Options from a parser extended by :func:`add_arguments`.

    Returns:
        ``(settings, host, port)``.

    Raises:
        EmulatorStartupError: for an unusable environment value.
        ValueError: for an option out of range.
    """
    port = args.port if args.port is not None else (_env_int("NIM_SERVER_PORT") or 8000)
    name = args.served_model_name or os.environ.get("NIM_SERVED_MODEL_NAME") or "cosmos-reason1-7b"
    max_len = args.max_model_len or _env_int("NIM_MAX_MODEL_LEN") or 8192
    model_path: str | None = args.model_path
    if model_path is None:
        env_model = os.environ.get("NIM_MODEL_NAME")
        if env_model:
            if _is_path(env_model):
                model_path = env_model
            else:
                log.info(
                    "emulator: NIM_MODEL_NAME=%s is not a path; serving the emulator's "
                    "built-in answers",
                    env_model,
                )
    if model_path is not None:
        model_path = os.path.expanduser(model_path)
    box_format = args.box_format or box_format_for_model(name)
    settings = EmulatorSettings(
        served_model_name=name,
        max_model_len=max_len,
        box_format=box_format,
        startup_seconds=args.startup_seconds,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        max_num_seqs=args.max_num_seqs,
        prefill_ms_per_1k_tokens=args.prefill_ms_per_1k_tokens,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        disconnect_after=args.disconnect_after,
        exit_after=args.exit_after,
        sampling_fields=args.sampling_fields,
        legacy_guided=getattr(args, "legacy_guided", False),
        ignore_guided=args.ignore_guided,
        reasoning=args.reasoning,
        model_path=model_path,
        max_pixels=args.max_pixels,
        seed=args.seed,
        vision=getattr(args, "vision", None),
    )
    return settings, args.host, port


def _check_cache(args: argparse.Namespace) -> bool:
    """Check the NIM cache is writable when acting as the container entrypoint."""
    env_path = os.environ.get("NIM_CACHE_PATH")
    enforce = bool(args.nim_container or env_path or args.cache_path or os.getpid() == 1)
    if not enforce:
        return True
    path = args.cache_path or env_path or DEFAULT_CACHE_PATH
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nim-emulator-write-check"):
            pass
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            log.error(
                "emulator: PermissionError: [Errno 13] Permission denied: cannot write to the "
                "NIM cache directory %s (%s). Make it writable by the container user.",
                path,
                exc.strerror,
            )
        else:
            log.error("emulator: cannot use the NIM cache directory %s: %s", path, exc)
        return False
    log.info("emulator: NIM cache directory %s is writable", path)
    return True


async def _serve(settings: EmulatorSettings, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    emu = Emulator(settings, host=host, port=port)
    try:
        await emu.start()
    except EmulatorStartupError as exc:
        log.error("emulator: cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("emulator: cannot listen on %s:%d: %s", host, port, exc)
        return 1
    # A line in the shape servers print, so people and tools see where it listens.
    log.info("emulator: listening on http://%s:%d (press CTRL+C to quit)", host, emu.port)
    stopped = loop.create_task(emu.wait_stopped())
    signalled = loop.create_task(stop.wait())
    try:
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    if signalled.done():
        stopped.cancel()
        log.info("emulator: signal received, shutting down")
        await emu.stop()
        return 0
    signalled.cancel()
    log.error("emulator: exiting with status 1 (--exit-after fault injection)")
    return 1


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGTERM/SIGINT or ``--exit-after``.

    Args:
        args: Options from a parser extended by :func:`add_arguments`.

    Returns:
        The process exit status.
    """
    _setup_logging(getattr(args, "log_level", "INFO"))
    try:
        settings, host, port = build_settings(args)
    except (EmulatorStartupError, ValueError) as exc:
        log.error("emulator: invalid configuration: %s", exc)
        return 1
    if not _check_cache(args):
        return 1
    if settings.model_path is not None and not os.path.isfile(
        os.path.join(settings.model_path, "config.json")
    ):
        log.error(
            "emulator: custom weights not found: %s has no config.json "
            "(set NIM_MODEL_NAME / --model-path to a Hugging Face model directory)",
            settings.model_path,
        )
        return 1
    log.info("emulator: this is the nim-async NIM emulator, a test double, not a model")
    try:
        return asyncio.run(_serve(settings, host, port))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the handler is installed
        return 0


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the emulator.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(prog="nim-async emulate")
    add_arguments(parser)
    args: Any = parser.parse_args(argv)
    return run(args)
