"""Host ports a deployment will publish on, checked free before any container is created.

A deployment of ``NIMConfig(replicas=N)`` publishes replica ``i`` on ``port + i``. Starting N
containers and finding the third port taken would start and remove two for nothing, so the
deployer asks first: :func:`check_ports_free` binds each ``(host, port)`` the way a listener
would (``SO_REUSEADDR``, so connections lingering in ``TIME_WAIT`` do not count) and raises
:class:`~nim_async.errors.PortInUseError` naming the first port that something already holds.
An address this host does not have is left for the engine to judge. The engine still
translates its own "port is already allocated" at start (a port taken in between).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from nim_async.errors import PortInUseError

__all__ = ["check_ports_free", "port_taken"]


def port_taken(host: str, port: int) -> bool:
    """Whether something on this host already holds ``host:port`` (TCP).

    Args:
        host: The address the port would be published on (``0.0.0.0``, ``::`` or one address).
        port: The TCP port.

    Returns:
        ``True`` when binding it fails with "address in use"; ``False`` when it is free or
        ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def check_ports_free(host: str, ports: Sequence[int]) -> None:
    """Raise unless every port of ``ports`` is free on ``host``.

    Args:
        host: The address the ports are published on (``NIMConfig.host``).
        ports: The host ports, replica 0's (``NIMConfig.port``) first.

    Raises:
        PortInUseError: For the first port taken, naming it (and, for several replicas, which
            replica needs it) and the fix.
    """
    for i, port in enumerate(ports):
        if not port_taken(host, port):
            continue
        if len(ports) == 1:
            message = (
                f"Port {port} is already in use on the host ({host}:{port}); nothing was "
                "started. Choose another NIMConfig.port or stop whatever listens there."
            )
        else:
            message = (
                f"Port {port} is already in use on the host ({host}:{port}); replica {i} of "
                f"{len(ports)} would be published there (NIMConfig(port={ports[0]}, "
                f"replicas={len(ports)}) takes ports {ports[0]}-{ports[-1]}), so nothing was "
                f"started. Choose a NIMConfig.port whose {len(ports)} ports from there are "
                "free, or stop whatever listens there."
            )
        raise PortInUseError(port, message)
