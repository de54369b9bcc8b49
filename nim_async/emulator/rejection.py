"""The emulator's request rejection: an exception that becomes a vLLM-shaped JSON error. No IO."""

from __future__ import annotations

__all__ = ["RequestError", "bad"]


class RequestError(Exception):
    """A request the emulator rejects; rendered as ``{"error": {message, type, param, code}}``.

    Args:
        status: HTTP status.
        message: The error message.
        param: The offending request field, if known.
    """

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def bad(message: str, param: str | None = None) -> RequestError:
    """Build a 400 :class:`RequestError`, to be raised.

    Args:
        message: The error message.
        param: The offending request field, if known.
    """
    return RequestError(400, message, param=param)
