"""What a pod's or a NIMService's status says about a deploy (IO-free, on plain dicts).

:func:`pod_ready` and :func:`pod_failure` read one pod as the API returns it;
:func:`nimservice_state` reads a NIMService's ``status`` as the NIM Operator writes it
(``state`` Ready / NotReady / Pending / Failed, conditions ``NIM_SERVICE_READY`` /
``NIM_SERVICE_FAILED``). The backend maps a :class:`PodFailure` to the package's exceptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "FailureKind",
    "PodFailure",
    "ServiceState",
    "classify_pull_message",
    "nimservice_state",
    "pod_failure",
    "pod_ready",
]

PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_AUTH = re.compile(
    r"\b401\b|\b403\b|unauthori[sz]ed|authorization failed|authentication required|"
    r"failed to authorize|access denied|denied: ",
    re.IGNORECASE,
)
GPU_RESOURCE = "nvidia.com/gpu"


class FailureKind(StrEnum):
    """Why a pod cannot become ready."""

    REGISTRY_AUTH = "registry-auth"
    IMAGE_PULL = "image-pull"
    NO_GPU = "no-gpu"
    CRASHED = "crashed"


@dataclass(frozen=True)
class PodFailure:
    """A pod that will not become ready without a change.

    Attributes:
        kind: The cause.
        pod: The pod name.
        message: What Kubernetes said (reason and message).
        exit_code: The container's last exit code (``CRASHED``).
        oom_killed: Whether it was killed for memory (``CRASHED``).
    """

    kind: FailureKind
    pod: str
    message: str
    exit_code: int | None = None
    oom_killed: bool = False


def classify_pull_message(message: str) -> FailureKind:
    """Whether an image-pull failure is the registry refusing the credentials.

    Args:
        message: The kubelet's message (``failed to pull ... 401 Unauthorized``).
    """
    return FailureKind.REGISTRY_AUTH if _AUTH.search(message) else FailureKind.IMAGE_PULL


def _name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def pod_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod is Ready and not being deleted.

    Args:
        pod: The pod object.
    """
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """The reason ``pod`` will not become ready, or ``None`` while it may still.

    Args:
        pod: The pod object.
    """
    name = _name(pod)
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
            and GPU_RESOURCE in str(condition.get("message", ""))
        ):
            return PodFailure(FailureKind.NO_GPU, name, str(condition.get("message")))
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in PULL_REASONS:
            message = f"{reason}: {waiting.get('message') or ''}".strip()
            return PodFailure(classify_pull_message(message), name, message)
        last = (container.get("lastState") or {}).get("terminated") or state.get("terminated")
        if last and (int(container.get("restartCount") or 0) >= 1 or reason == "CrashLoopBackOff"):
            return PodFailure(
                FailureKind.CRASHED,
                name,
                f"{last.get('reason') or 'exited'} (exit code {last.get('exitCode')})",
                exit_code=int(last.get("exitCode") or 0),
                oom_killed=last.get("reason") == "OOMKilled",
            )
    return None


def pod_summary(pod: dict[str, Any]) -> str:
    """One line about where a pod stands (phase, waiting reasons, unschedulable message).

    Args:
        pod: The pod object.
    """
    status = pod.get("status") or {}
    parts = [f"{_name(pod)}: {status.get('phase', 'Unknown')}"]
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            parts.append(f"{condition.get('type')}: {condition.get('message')}")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            parts.append(f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip())
    return "; ".join(parts)


class ServiceState(StrEnum):
    """A NIMService's state as the deployer reads it."""

    READY = "Ready"
    FAILED = "Failed"
    WAITING = "waiting"


def nimservice_state(obj: dict[str, Any]) -> tuple[ServiceState, str]:
    """The state of a NIMService and the operator's message about it.

    Args:
        obj: The NIMService object.

    Returns:
        ``(state, message)``; ``message`` joins the conditions' reasons and messages.
    """
    status = obj.get("status") or {}
    state = str(status.get("state") or "")
    notes = [
        f"{c.get('type')}={c.get('status')} {c.get('reason') or ''}: {c.get('message') or ''}"
        for c in status.get("conditions") or []
    ]
    message = f"state {state or 'unset'}" + (f" ({'; '.join(notes)})" if notes else "")
    conditions = {str(c.get("type")): c for c in status.get("conditions") or []}
    failed = conditions.get("NIM_SERVICE_FAILED", {}).get("status") == "True"
    if state == "Failed" or failed:
        return ServiceState.FAILED, message
    ready = conditions.get("NIM_SERVICE_READY", {}).get("status")
    if state == "Ready" and ready in (None, "True"):
        return ServiceState.READY, message
    return ServiceState.WAITING, message
