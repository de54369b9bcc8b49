"""HTTP status + error body -> the typed ``nim_async`` error (no IO).

Servers answer errors in two JSON shapes, both read here:

* nested (OpenAI, vLLM, NIM): ``{"error": {"message": ..., "type": ..., "code": ...}}``;
* flat (older vLLM, FastAPI): ``{"object": "error", "message": ..., "type": ...}`` or
  ``{"detail": ...}`` (a 422 validation error).

Anything else (an HTML page from a proxy, an empty body) keeps its first 500 characters, or the
reason phrase, as the message.
"""

from __future__ import annotations

import math

import orjson

from nim_async.errors import BadRequestError, ModelNotFoundError, RateLimitError, ServerError

__all__ = ["error_for_status", "retry_after_seconds"]


def error_for_status(
    status: int,
    content: bytes,
    reason: str = "",
    *,
    retry_after: float | None = None,
) -> ServerError:
    """Build the typed error for an HTTP error answer.

    Args:
        status: The HTTP status code (400 or more).
        content: The response body.
        reason: The HTTP reason phrase, used when the body says nothing.
        retry_after: Seconds from the server's ``Retry-After`` header, when given.

    Returns:
        ``BadRequestError`` for 400/422, ``ModelNotFoundError`` for 404, ``RateLimitError`` for
        429, else ``ServerError``; each carries the server's message and error type.
    """
    message, error_type = _read_body(content)
    if message is None:
        text = content[:500].decode("utf-8", "replace").strip()
        message = text or reason or "no error message"
    cls: type[ServerError]
    if status in (400, 422):
        cls = BadRequestError
    elif status == 404:
        cls = ModelNotFoundError
    elif status == 429:
        cls = RateLimitError
    else:
        cls = ServerError
    if retry_after is not None:
        message = f"{message} (the server's Retry-After: {retry_after:g} s)"
    return cls(status, message, error_type=error_type, retry_after=retry_after)


def _read_body(content: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    message: str | None = None
    error_type: str | None = None
    err = data.get("error")
    if isinstance(err, dict):
        message = _as_text(err.get("message"))
        error_type = _as_text(err.get("type"))
    elif isinstance(err, str):
        message = err
    if message is None and ("message" in data or data.get("object") == "error"):
        message = _as_text(data.get("message"))
        error_type = error_type or _as_text(data.get("type"))
    if message is None and "detail" in data:
        message = _as_text(data.get("detail"))
    return message, error_type


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (``None`` when absent or a date).

    Args:
        value: The header value.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()
