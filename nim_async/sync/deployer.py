"""NIMDeployer: the documented blocking API over the async deployer.

The core is :class:`nim_async.deploy.deployer.AsyncNIMDeployer`.

Every call runs on the one process-wide loop thread (:mod:`nim_async.sync._portal`) and blocks
until it finishes; Ctrl-C cancels the running deploy, which removes the container it created.
SIGTERM and SIGHUP do the same while :meth:`NIMDeployer.deploy` runs in the main thread (then
``SystemExit(143)``, SIGHUP: 129), unless the script installed its own handler for them.
Exceptions cross unchanged. A deployer holds no connection between calls (each call opens and
closes its own Docker client), so there is nothing to close and nothing for a finalizer to wait
for: a script ends promptly whether its deploy succeeded or failed.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any, Self

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer, ContainerStatus
from nim_async.results import NIMDeploymentResult
from nim_async.sync import _portal
from nim_async.ui.console import Console

__all__ = ["NIMDeployer"]

_CANCEL_CLEANUP_WAIT = 60.0
_STOP_CLEANUP_MARGIN = 5.0
_CANCELLING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP during a deploy: the portal cancels it like Ctrl-C, then we exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[None]:
    """While inside (main thread only): SIGTERM/SIGHUP raise :class:`_Terminated`, once.

    Only signals at their default disposition are taken (never a handler the script installed,
    never an ignored SIGHUP); the previous handlers are restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:  # a second signal must not cut the clean-up short
            return
        received.append(signum)
        raise _Terminated(signum)

    previous: dict[int, object] = {}
    for signum in _CANCELLING_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum in previous:
            signal.signal(signum, signal.SIG_DFL)


class NIMDeployer:
    """Manages the NVIDIA NIM container deployment lifecycle (blocking API).

    Constructing one validates the configuration and makes no Docker connection.

    Args:
        config: Deployment configuration; ``None`` builds one from the environment
            (``NGC_API_KEY`` required).
        quiet: Suppress all console output.
        console: Where progress and logs go (default: a rich console on stderr).
        **kubernetes: ``backend="kubernetes"``, ``namespace``, ``context``, ``kubeconfig``,
            ``port_forward``, ``url``: passed to :class:`AsyncNIMDeployer` as they are.

    Raises:
        InvalidConfigError: If ``config`` is ``None`` and the environment gives no valid key.
    """

    def __init__(
        self,
        config: NIMConfig | None = None,
        quiet: bool = False,
        *,
        console: Console | None = None,
        **kubernetes: Any,
    ) -> None:
        self._core = AsyncNIMDeployer(config, quiet, console=console, **kubernetes)

    @property
    def config(self) -> NIMConfig:
        """The deployment configuration."""
        return self._core.config

    @property
    def quiet(self) -> bool:
        """Whether console output is suppressed."""
        return self._core.quiet

    def __repr__(self) -> str:
        return f"NIMDeployer(image={self.config.image_ref!r}, quiet={self.quiet})"

    def deploy(self) -> NIMDeploymentResult:
        """Deploy a NIM container (with optional custom weights) and wait until it is ready.

        With ``NIMConfig(replicas=N)``: N containers as one deployment, all waited for
        (see :meth:`AsyncNIMDeployer.deploy`); ``result.endpoints`` lists their URLs.

        Returns:
            The deployment result.

        Raises:
            InvalidConfigError: Configuration is invalid.
            ContainerExistsError: Container exists and is not configured to reuse/kill.
            ModelIncompatibilityError: Model incompatible with the container.
            ServiceNotReadyError: Not ready within ``config.startup_timeout``.
            APIError: Docker operations fail (see :meth:`AsyncNIMDeployer.deploy`).
            SystemExit: 143 (SIGHUP: 129) when SIGTERM/SIGHUP cancelled the deploy (in the main
                thread, with no handler of the script's own), after the clean-up.
        """
        # Ctrl-C (and SIGTERM/SIGHUP, as _Terminated) cancels the deploy on the loop; it may
        # take a while to remove its container.
        try:
            with _cancel_on_signals():
                return _portal.call(self._core.deploy, cleanup_wait=_CANCEL_CLEANUP_WAIT)
        except _Terminated as exc:
            raise SystemExit(128 + exc.signum) from None

    def close(self) -> None:
        """Close a Kubernetes port-forward if one is open; the container / pods keep running."""
        if self._core.backend == "kubernetes":
            _portal.call(functools.partial(self._core.__aexit__, None, None, None))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def stop(
        cls, container_name: str, quiet: bool = False, *, grace: float = 10.0, **kubernetes: Any
    ) -> bool:
        """Stop a running NIM container and remove it.

        The name of a deployment of several replicas (``NIMConfig.container_name``) stops and
        removes every replica, at once; a replica's own name (``name-r1``) only that one.

        Args:
            container_name: Container name or ID, or the deployment's name.
            quiet: Suppress console output.
            grace: Seconds between SIGTERM and SIGKILL.
            **kubernetes: ``backend="kubernetes"``, ``namespace``, ``context``, ``kubeconfig``.

        Returns:
            ``True`` if stopped, ``False`` if not found.
        """
        return _portal.call(
            functools.partial(
                AsyncNIMDeployer.stop, container_name, quiet, grace=grace, **kubernetes
            ),
            cleanup_wait=grace + _STOP_CLEANUP_MARGIN,
        )

    @classmethod
    def status(cls, container_name: str) -> ContainerStatus | None:
        """The status of one container, or ``None`` if there is none.

        Args:
            container_name: Container name or ID.
        """
        return _portal.call(AsyncNIMDeployer.status, container_name)

    @classmethod
    def list(cls, **kubernetes: Any) -> builtins.list[ContainerStatus]:
        """The containers managed by ``nim_async``.

        Args:
            **kubernetes: ``backend="kubernetes"``, ``namespace``, ``context``, ``kubeconfig``.

        Returns:
            One :class:`~nim_async.deploy.deployer.ContainerStatus` per container.
        """
        return _portal.call(functools.partial(AsyncNIMDeployer.list, **kubernetes))
