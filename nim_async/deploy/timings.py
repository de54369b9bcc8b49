"""When the steps of the last deploy happened (``time.perf_counter()`` marks, for benchmarks)."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["DeployTimings"]


class DeployTimings(BaseModel):
    """``time.perf_counter()`` marks of the last :meth:`AsyncNIMDeployer.deploy` (for benchmarks).

    Attributes:
        started: When ``deploy()`` began.
        container_started: When the container was started (the last replica's start).
        ready: When readiness was observed (of the last replica to become ready).
        exited: When a container's exit was observed.
        finished: When ``deploy()`` returned or raised.
    """

    started: float = 0.0
    container_started: float | None = None
    ready: float | None = None
    exited: float | None = None
    finished: float | None = None
