"""What the commands share: options -> NIMConfig / NIMSamplingParams / predictor, the console."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from nim_async.config import NIMConfig, NIMSamplingParams
    from nim_async.predict.predictor import AsyncNIMPredictor

__all__ = [
    "base_url",
    "config_from_args",
    "console",
    "make_predictor",
    "sampling_from_args",
]


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
    "media_io_kwargs",
    "mm_processor_kwargs",
)
_JSON_FIELDS = ("media_io_kwargs", "mm_processor_kwargs")


def _read_at_file(value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return value


def _json_object(name: str, text: str) -> Any:
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        option = "--" + name.replace("_", "-")
        raise ValueError(f"{option} must be a JSON object: {exc}") from None


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
        if name in ("guided_json", "guided_grammar", *_JSON_FIELDS):
            value = _read_at_file(value)
        if name in _JSON_FIELDS:
            value = _json_object(name, value)
        if name == "stop" and len(value) == 1:
            value = value[0]
        given[name] = value
    if not given:
        return None
    from nim_async.config import NIMSamplingParams

    return NIMSamplingParams(**given)


def base_url(args: argparse.Namespace) -> str:
    """The NIM URL of a command with the NIM server options (``--url`` or ``--host/--port``).

    Raises:
        ValueError: for a malformed ``--url`` or an out-of-range ``--port``.
    """
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


def make_predictor(
    args: argparse.Namespace,
    *,
    task: str,
    max_connections: int = 16,
    retries: int | None = None,
) -> AsyncNIMPredictor:
    """The predictor of a command with the NIM server options.

    Args:
        args: Parsed arguments.
        task: The task type.
        max_connections: HTTP connections to keep (the batch's concurrency).
        retries: The predictor's retries (``None``: its default). ``nim-async batch`` passes 0
            and gives ``--retries`` to the batch, the one retrier of that command.
    """
    extra: dict[str, Any] = {}
    if retries is not None:
        extra["retries"] = retries
    from nim_async.predict.predictor import AsyncNIMPredictor

    return AsyncNIMPredictor(
        model_name=args.model,
        task_type=task,
        base_url=base_url(args),
        system_prompt=args.system_prompt,
        box_format=args.box_format,
        dialect=args.dialect,
        timeout=args.timeout,
        max_connections=max_connections,
        **extra,
    )


def console(stderr: bool = False) -> Console:
    """A rich console for command output (stdout, or stderr), without highlighting.

    Args:
        stderr: Write to stderr.
    """
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


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
    "merge_adapter",
    "gpus",
    "startup_timeout",
    "secret_key",
    "organization_id",
    "endpoint",
    "replicas",
)


def _parse_gpus(value: str) -> str | int | list[str] | list[list[str]] | None:
    text = value.strip()
    if text.lower() == "none":
        return None
    if text.lower() == "all":
        return "all"
    if text.isdigit():
        return int(text)
    if ";" in text:  # one group of device ids per replica: 0,1;2,3
        return [[p.strip() for p in group.split(",") if p.strip()] for group in text.split(";")]
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
