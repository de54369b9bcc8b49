"""Resolve a predictor's target (model, task, URL, box format) from its arguments (no IO).

A :class:`~nim_async.config.NIMConfig` supplies the model name, URL and image spec; custom-weights
runs supply the task type and system prompt from their stored run metadata.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

from nim_async.catalog import BOX_FORMATS, KNOWN_IMAGES, BoxFormat, ImageSpec, box_format_for_model
from nim_async.config import NIMConfig
from nim_async.errors import InvalidParameterError
from nim_async.predict.routing import shown_url
from nim_async.protocol import wire
from nim_async.protocol.urls import base_url_problem
from nim_async.results import NIMDeploymentResult

__all__ = [
    "Target",
    "check_limits",
    "check_numbers",
    "check_port",
    "resolve_endpoints",
    "resolve_target",
]


DEFAULT_TASK_TYPE = "freeform"
"""The task of a predictor given no ``task_type`` and no run metadata naming one (vi-sdk's)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and what to predict, resolved from the constructor's arguments."""

    model_name: str
    task_type: str
    base_url: str
    spec: ImageSpec
    box_format: BoxFormat
    system_prompt: str | None


def resolve_target(
    model_name: str | None,
    task_type: str | None,
    port: int | str,
    host: str,
    base_url: str | None,
    config: NIMConfig | None,
    system_prompt: str | None,
    box_format: BoxFormat | None,
) -> Target:
    """Resolve where and what to predict from the predictor's arguments (see its docstring).

    The task type is ``task_type``, else the custom-weights run metadata's, else
    :data:`DEFAULT_TASK_TYPE` (``"freeform"``, as vi-sdk).

    Raises:
        ValueError: a missing model name, a bad port or box format.
    """
    spec: ImageSpec | None = None
    custom_weights = False
    if config is not None:
        model_name = model_name or config.served_model_name or config.image_name
        base_url = base_url or config.base_url
        spec = KNOWN_IMAGES.get(config.image_name)
        custom_weights = config.run_id is not None or config.model_path is not None
        if task_type is None or system_prompt is None:
            metadata = _load_run_metadata(config)
            if metadata is not None:
                task_type = task_type or metadata.task_type
                if system_prompt is None:
                    system_prompt = metadata.system_prompt
    if not model_name:
        raise ValueError("model_name is required (or pass config=NIMConfig(...))")
    if not task_type:
        # vi-sdk's rule: no task type given and none in the run metadata -> freeform
        task_type = DEFAULT_TASK_TYPE
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box_format {box_format!r}")
    if base_url is None:
        port = check_port(port)
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        base_url = f"http://{shown}:{port}"
    if box_format is None:
        box_format = "norm1024" if custom_weights else box_format_for_model(model_name)
    return Target(
        model_name=model_name,
        task_type=task_type,
        base_url=base_url.rstrip("/"),
        spec=spec or KNOWN_IMAGES.get(model_name) or ImageSpec(model_name, (), (), "norm1024"),
        box_format=box_format,
        system_prompt=system_prompt,
    )


def check_port(port: object) -> int:
    """Return ``port`` as an ``int``: an ``int`` or a string of digits (``"8000"``), 1-65535.

    Raises:
        InvalidParameterError: (a ``ValueError``) for anything else.
    """
    value: int | None = None
    if isinstance(port, int) and not isinstance(port, bool):
        value = port
    elif isinstance(port, str) and port.strip().isdigit():
        value = int(port.strip())
    if value is None or not 1 <= value <= 65535:
        raise InvalidParameterError(
            f"port must be an integer between 1 and 65535, got {port!r}", field="port"
        )
    return value


def check_limits(**limits: float | None) -> None:
    """Check the predictor's caps and deadlines: each positive (``stream_deadline`` may be None).

    Raises:
        InvalidParameterError: naming the offending argument.
    """
    for name, value in limits.items():
        if value is None and name == "stream_deadline":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not value > 0
            or value == float("inf")
        ):
            raise InvalidParameterError(
                f"{name} must be a positive finite number, got {value!r}", field=name
            )


def check_numbers(
    dialect: str, timeout: float, max_connections: int, retries: int, max_pixels: int | None
) -> None:
    """Check the predictor's numeric and dialect arguments.

    Raises:
        InvalidParameterError: (a ``ValueError``) naming the offending argument: an unknown
            dialect, a timeout that is not a positive finite number, or a count that is not
            an integer in range.
    """
    if dialect not in wire.DIALECTS:
        raise InvalidParameterError(
            f"dialect must be one of {', '.join(map(repr, wire.DIALECTS))}", field="dialect"
        )
    check_limits(timeout=timeout)
    least = {"max_connections": 1, "retries": 0, "max_pixels": 28 * 28}
    given: dict[str, object] = {
        "max_connections": max_connections,
        "retries": retries,
        "max_pixels": max_pixels,
    }
    for name, value in given.items():
        if value is None and name == "max_pixels":
            continue
        number: int | None = None
        if isinstance(value, SupportsIndex) and not isinstance(value, bool):
            number = operator.index(value)  # an int, or a numpy integer
        if number is None or number < least[name]:
            raise InvalidParameterError(
                f"{name} must be an integer of at least {least[name]}, got {value!r}", field=name
            )


def _load_run_metadata(config: NIMConfig) -> Any:
    try:
        from nim_async.deploy.weights import load_run_metadata
    except ImportError:  # pragma: no cover - weights.py is part of the package
        return None
    return load_run_metadata(config)


def resolve_endpoints(
    endpoints: Sequence[str] | NIMDeploymentResult | None,
    base_url: str | None,
    config: NIMConfig | None,
) -> tuple[tuple[str, ...], str | None]:
    """The endpoints a predictor spreads its requests over (no IO).

    Args:
        endpoints: Base URLs (``["http://127.0.0.1:8000", "http://127.0.0.1:8001"]``), or a
            :class:`~nim_async.results.NIMDeploymentResult` (its ``endpoints``, or
            ``[base_url]`` for a result without them), or ``None``.
        base_url: The predictor's ``base_url`` argument (not allowed together with
            ``endpoints``).
        config: With neither ``endpoints`` nor ``base_url``, a config with ``replicas`` N > 1
            gives ports ``port .. port+N-1`` on its host.

    Returns:
        The endpoints (normalised, without a trailing ``/``; empty when the predictor has one
        endpoint resolved as before, from ``base_url``, ``config`` or ``host``/``port``), and
        the served model name a deployment result names (``None`` otherwise).

    Raises:
        InvalidParameterError: ``base_url`` and ``endpoints`` together, no endpoint, a single
            string instead of a list, an entry that is not an ``http(s)://`` URL, or an
            endpoint given twice.
    """
    model: str | None = None
    if endpoints is None:
        if config is None or base_url is not None or config.replicas < 2:
            return (), None
        return tuple(config.replica_base_urls), None
    if base_url is not None:
        raise InvalidParameterError(
            "give either base_url (one server) or endpoints (several), not both",
            field="endpoints",
        )
    if isinstance(endpoints, NIMDeploymentResult):
        model = endpoints.served_model_name or next(iter(endpoints.available_models or ()), None)
        urls: object = endpoints.endpoints or [endpoints.base_url]
    else:
        urls = endpoints
    if isinstance(urls, str | bytes):
        raise InvalidParameterError(
            f"endpoints must be a list of base URLs, not one string ({urls!r}); for one server "
            "pass base_url=",
            field="endpoints",
        )
    try:
        items = list(urls)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidParameterError(
            "endpoints must be a list of base URLs or a deployment result, not "
            f"{type(urls).__name__}",
            field="endpoints",
        ) from None
    if not items:
        raise InvalidParameterError("endpoints must name at least one URL", field="endpoints")
    seen: list[str] = []
    for item in items:
        problem = base_url_problem(item) if isinstance(item, str) else "not a string"
        if problem is not None:
            shown = shown_url(item) if isinstance(item, str) else repr(item)
            raise InvalidParameterError(
                f"each endpoint must be an http(s):// base URL; {shown}: {problem}",
                field="endpoints",
            )
        url = item.rstrip("/")
        if url in seen:
            raise InvalidParameterError(
                f"the endpoint {shown_url(url)} is given twice; give each server once",
                field="endpoints",
            )
        seen.append(url)
    return tuple(seen), model
