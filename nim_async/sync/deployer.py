"""NIMDeployer: the documented blocking API over the async deployer.

The core is :class:`nim_async.deploy.deployer.AsyncNIMDeployer`.

Every call runs on the one process-wide loop thread (:mod:`nim_async.sync._portal`) and blocks
until it finishes; Ctrl-C cancels the running deploy, which removes the container it created.
Exceptions cross unchanged. A deployer holds no connection between calls (each call opens and
closes its own Docker client), so there is nothing to close and nothing for a finalizer to wait
for: a script ends promptly whether its deploy succeeded or failed.
"""

from __future__ import annotations

import builtins
import functools
from types import TracebackType
from typing import Self

from nim_async.config import NIMConfig
from nim_async.deploy.deployer import AsyncNIMDeployer, ContainerStatus
from nim_async.results import NIMDeploymentResult
from nim_async.sync import _portal
from nim_async.ui.console import Console

__all__ = ["NIMDeployer"]

_CANCEL_CLEANUP_WAIT = 60.0
_STOP_CLEANUP_MARGIN = 5.0


class NIMDeployer:
    """Manages the NVIDIA NIM container deployment lifecycle (blocking API).

    Constructing one validates the configuration and makes no Docker connection.

    Args:
        config: Deployment configuration; ``None`` builds one from the environment
            (``NGC_API_KEY`` required).
        quiet: Suppress all console output.
        console: Where progress and logs go (default: a rich console on stderr).

    Raises:
        InvalidConfigError: If ``config`` is ``None`` and the environment gives no valid key.
    """

    def __init__(
        self,
        config: NIMConfig | None = None,
        quiet: bool = False,
        *,
        console: Console | None = None,
    ) -> None:
        self._core = AsyncNIMDeployer(config, quiet, console=console)

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

        Returns:
            The deployment result.

        Raises:
            InvalidConfigError: Configuration is invalid.
            ContainerExistsError: Container exists and is not configured to reuse/kill.
            ModelIncompatibilityError: Model incompatible with the container.
            ServiceNotReadyError: Not ready within ``config.startup_timeout``.
            APIError: Docker operations fail (see :meth:`AsyncNIMDeployer.deploy`).
        """
        # Ctrl-C cancels the deploy on the loop; it may take a while to remove its container.
        return _portal.call(self._core.deploy, cleanup_wait=_CANCEL_CLEANUP_WAIT)

    def close(self) -> None:
        """Nothing to release (kept for the documented API); the container keeps running."""

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
    def stop(cls, container_name: str, quiet: bool = False, *, grace: float = 10.0) -> bool:
        """Stop a running NIM container and remove it.

        Args:
            container_name: Container name or ID.
            quiet: Suppress console output.
            grace: Seconds between SIGTERM and SIGKILL.

        Returns:
            ``True`` if stopped, ``False`` if not found.
        """
        return _portal.call(
            functools.partial(AsyncNIMDeployer.stop, container_name, quiet, grace=grace),
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
    def list(cls) -> builtins.list[ContainerStatus]:
        """The containers managed by ``nim_async``.

        Returns:
            One :class:`~nim_async.deploy.deployer.ContainerStatus` per container.
        """
        return _portal.call(AsyncNIMDeployer.list)
