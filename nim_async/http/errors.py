"""THE one place httpx exceptions become ``nim_async`` errors.

Every httpx call of the package goes through :func:`translate` (or :func:`failure_kind` to
name a failure without raising). The message says what went wrong in words a user can act on;
where the exception chain lets us tell them apart, a connection failure is named as refused,
reset, DNS, TLS or timeout. The original exception stays as ``__cause__``.

Phases:

* ``"connect"``: sending a request, before any answer (no server, connection broke before the
  answer): :class:`~nim_async.errors.ServiceUnavailableError` (retryable).
* ``"read"``: reading an answer or a stream: :class:`~nim_async.errors.StreamError` with the
  partial text.
* any phase, a timeout: :class:`~nim_async.errors.PredictionTimeoutError`, except a connect
  timeout, which is a server not answering (``ServiceUnavailableError``).
"""

from __future__ import annotations

import socket
import ssl
from typing import Literal

import httpx

from nim_async.errors import (
    NIMPredictionError,
    PredictionTimeoutError,
    ServiceUnavailableError,
    StreamError,
)

__all__ = ["HTTPError", "Phase", "connection_problem", "failure_kind", "translate"]

HTTPError = httpx.HTTPError
"""The base class of the exceptions :func:`translate` accepts (for ``except`` in ``http/``)."""

Phase = Literal["connect", "read"]


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def connection_problem(exc: BaseException) -> str | None:
    """Name the low-level cause of a connection failure, when the exception chain shows it.

    Args:
        exc: An httpx exception (its ``__cause__`` chain is searched).

    Returns:
        ``"connection refused"``, ``"connection reset"``, ``"DNS lookup failed"``,
        ``"TLS handshake failed"``, ``"connect timeout"``, or ``None`` when unknown.
    """
    for item in _chain(exc):
        name = type(item).__name__
        if isinstance(item, httpx.ConnectTimeout) or name == "ConnectionTimeoutError":
            return "connect timeout"
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, ConnectionResetError | BrokenPipeError):
            return "connection reset"
        if isinstance(item, socket.gaierror) or name == "ClientConnectorDNSError":
            return "DNS lookup failed"
        if isinstance(item, ssl.SSLError | ssl.CertificateError) or name in (
            "ClientSSLError",
            "ClientConnectorSSLError",
            "ClientConnectorCertificateError",
        ):
            return "TLS handshake failed"
    text = str(exc).lower()
    for needle, problem in (
        ("connection refused", "connection refused"),
        ("connect call failed", "connection refused"),
        ("reset by peer", "connection reset"),
        ("name or service not known", "DNS lookup failed"),
        ("nodename nor servname", "DNS lookup failed"),
        ("temporary failure in name resolution", "DNS lookup failed"),
        ("certificate", "TLS handshake failed"),
    ):
        if needle in text:
            return problem
    return None


def translate(
    exc: httpx.HTTPError,
    *,
    base_url: str,
    phase: Phase,
    timeout: float | None = None,
    what: str = "the request",
    partial_text: str = "",
) -> NIMPredictionError:
    """Return the ``nim_async`` error for an httpx exception (raise it ``from exc``).

    Args:
        exc: The httpx exception.
        base_url: The server's base URL, for the message (never carries a secret here).
        phase: ``"connect"`` (before an answer) or ``"read"`` (reading the answer or stream).
        timeout: The timeout in seconds that ran out, for the message.
        what: What was being done (``"GET /v1/models"``), for the message.
        partial_text: Content received before a stream broke.

    Returns:
        ``PredictionTimeoutError`` for a timeout, ``ServiceUnavailableError`` for a failure
        before the server answered, ``StreamError`` for one while reading.
    """
    problem = connection_problem(exc)
    waited = f" within {timeout:g} s" if timeout is not None else ""
    if isinstance(exc, httpx.ConnectTimeout) and phase == "connect":
        return ServiceUnavailableError(
            base_url, f"no connection to {base_url}{waited} (connect timeout; {what})"
        )
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.PoolTimeout):
            return PredictionTimeoutError(f"no free connection to {base_url}{waited} ({what})")
        verb = "answer" if phase == "connect" else "send more data"
        return PredictionTimeoutError(f"the server at {base_url} did not {verb}{waited} ({what})")
    if phase == "connect":
        if isinstance(exc, httpx.ConnectError) and problem in (None, "connection refused"):
            if problem is None:
                return ServiceUnavailableError(base_url)
            return ServiceUnavailableError(
                base_url,
                f"No server answers at {base_url} (connection refused). Is the container "
                "running and the port right? (deploy one with NIMDeployer, or start the "
                "emulator with `nim-async emulate`)",
            )
        if isinstance(exc, httpx.TransportError):
            cause = problem or type(exc).__name__
            return ServiceUnavailableError(
                base_url, f"{what} to {base_url} failed before an answer ({cause}): {exc}"
            )
        return NIMPredictionError(f"{what} to {base_url} failed: {exc}")
    cause = problem or type(exc).__name__
    return StreamError(
        f"the connection to {base_url} broke while reading the answer ({cause}): {exc}",
        partial_text=partial_text,
    )


def failure_kind(exc: BaseException) -> str:
    """A short name for a failure, for records and reports (``"ConnectError"``, ``"HTTP 503"``).

    For a translated error whose cause is an httpx exception, the httpx class name; for a
    ``ServerError``, ``HTTP <status>``; else the exception's class name.

    Args:
        exc: The exception.
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    cause = exc.__cause__
    if isinstance(cause, httpx.HTTPError):
        return type(cause).__name__
    return type(exc).__name__
