"""The Docker engine's failures as ``nim_async`` errors: the one mapping for ``aiodocker``.

* daemon not reachable → :class:`~nim_async.errors.DockerUnavailableError` (naming ``DOCKER_HOST``)
* registry refused the credentials → :class:`~nim_async.errors.RegistryAuthError`
* ``could not select device driver`` → :class:`~nim_async.errors.GPURuntimeError`
* ``port is already allocated`` / ``address already in use`` →
  :class:`~nim_async.errors.PortInUseError`
* container name conflict → :class:`~nim_async.errors.ContainerExistsError`
* anything else → the given default (:class:`~nim_async.errors.APIError`) with the HTTP status
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import aiohttp

from nim_async.errors import (
    APIError,
    ContainerExistsError,
    DockerUnavailableError,
    GPURuntimeError,
    ImagePullError,
    NIMDeploymentError,
    PortInUseError,
    RegistryAuthError,
)

__all__ = ["DEFAULT_DOCKER_HOST", "docker_host", "translate", "unavailable", "unreachable_reason"]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_GPU_HINT = (
    "Docker could not start the container with a GPU: the host has no GPU container runtime "
    "({detail}). Install the NVIDIA Container Toolkit (nvidia-container-toolkit), run "
    "`nvidia-ctk runtime configure --runtime=docker` and restart dockerd; or set "
    "NIMConfig(gpus=None) to start without a GPU request."
)
_UNAUTHORIZED = re.compile(
    r"unauthori[sz]ed|authentication required|no basic auth credentials|"
    r"incorrect username or password|denied: requested access",
    re.IGNORECASE,
)


def docker_host() -> str:
    """Describe the Docker endpoint in use, for error messages.

    Returns:
        ``DOCKER_HOST`` when set, else the default socket, labelled accordingly.
    """
    value = os.environ.get("DOCKER_HOST")
    if value:
        return f"{value} (from DOCKER_HOST)"
    return f"{DEFAULT_DOCKER_HOST} (the default; DOCKER_HOST is not set)"


def unavailable(detail: str) -> DockerUnavailableError:
    """The error for a daemon that cannot be reached, saying where it was looked for.

    Args:
        detail: What failed.
    """
    return DockerUnavailableError(
        f"Cannot reach the Docker daemon at {docker_host()}: {detail}. Is dockerd running, and "
        "does DOCKER_HOST point at it (and may this user use its socket)?"
    )


_UNREACHABLE = (
    ("connection refused", "connection refused"),
    ("no such host", "no such host (DNS)"),
    ("server misbehaving", "DNS lookup failed"),
    ("i/o timeout", "timed out"),
    ("context deadline exceeded", "timed out"),
    ("connection reset by peer", "connection reset"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("server gave http response to https client", "it speaks HTTP, not HTTPS"),
    ("tls: ", "TLS failed"),
    ("x509: ", "its TLS certificate was not accepted"),
)


def unreachable_reason(message: str) -> str | None:
    """Why the engine could not reach a registry, from its message (``None``: it answered).

    Args:
        message: The engine's error message.
    """
    lowered = message.lower()
    for needle, reason in _UNREACHABLE:
        if needle in lowered:
            return reason
    return None


def translate(
    exc: BaseException,
    action: str,
    scrub: Callable[[str], str],
    *,
    default: type[APIError] = APIError,
    port: int | None = None,
    name: str | None = None,
    registry: str | None = None,
) -> NIMDeploymentError:
    """The ``nim_async`` error for an ``aiodocker`` / ``aiohttp`` failure (raise it ``from exc``).

    Args:
        exc: The exception.
        action: What was being done (``pull nvcr.io/...``), for the message.
        scrub: Hides the secrets in the engine's message.
        default: The error class when nothing more specific applies.
        port: The published host port, to recognise "port is already allocated".
        name: The container name, to recognise a name conflict.
        registry: The registry host being talked to (login), to recognise one that cannot be
            reached (an :class:`ImagePullError` saying so, not an auth error).
    """
    if isinstance(exc, aiohttp.ClientError | ConnectionError | FileNotFoundError):
        return unavailable(scrub(str(exc) or type(exc).__name__))
    status = getattr(exc, "status", None)
    message = scrub(str(getattr(exc, "message", None) or exc))
    if status == 900 or "Cannot connect to Docker Engine" in message:
        return unavailable(message)
    if "could not select device driver" in message:
        return GPURuntimeError(_GPU_HINT.format(detail=message), status_code=status)
    if port is not None and (
        "port is already allocated" in message or "address already in use" in message
    ):
        return PortInUseError(
            port,
            f"Port {port} is already in use on the host ({message}). Choose another "
            "NIMConfig.port or stop whatever listens there.",
        )
    if name is not None and status == 409 and "is already in use" in message:
        return ContainerExistsError(name)
    if registry is not None and (reason := unreachable_reason(message)) is not None:
        return ImagePullError(
            f"The registry at {registry} is unreachable ({reason}) while trying to {action}: "
            f"{message}. Check NIMConfig.registry and that the registry is up.",
            status_code=status or None,
        )
    if status == 401 or _UNAUTHORIZED.search(message):
        return RegistryAuthError(
            f"The registry refused the credentials while trying to {action}: {message}",
            status_code=status,
        )
    return default(f"Docker could not {action}: {message}", status_code=status or None)
