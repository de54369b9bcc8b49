"""What ``nim-async ps`` shows about a container, read from the engine's documents (IO-free).

:func:`status_from_inspect` reads a ``docker inspect`` document, :func:`status_from_summary` one
entry of ``docker ps``; both give a :class:`ContainerStatus`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    CONTAINER_PORT,
    DEPLOYMENT_LABEL,
    LABEL_PREFIX,
    REPLICA_LABEL,
    describe_state,
    env_value,
    published_port,
)

__all__ = ["ContainerStatus", "status_from_inspect", "status_from_summary"]


class ContainerStatus(BaseModel):
    """One container managed by ``nim_async`` (as listed by ``nim-async ps``).

    Attributes:
        name: Container name.
        container_id: Full container id.
        image: Image reference.
        state: Engine state (``running``, ``exited``, ...).
        status: Human-readable status (``Up 3 minutes``).
        host: Host address the NIM port is published on.
        port: Host port of the NIM.
        served_model_name: ``NIM_SERVED_MODEL_NAME`` it was started with, if any.
        config_hash: Hash of the settings it was started with.
        deployment: The deployment it is a replica of (``NIMConfig.container_name``), when
            labelled.
        replica: Its replica index in that deployment, when labelled.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    container_id: str
    image: str
    state: str
    status: str
    host: str | None = None
    port: int | None = None
    served_model_name: str | None = None
    config_hash: str | None = None
    deployment: str | None = None
    replica: int | None = None


def _replica(labels: Mapping[str, Any]) -> int | None:
    value = str(labels.get(REPLICA_LABEL, ""))
    return int(value) if value.isdigit() else None


def status_from_inspect(info: Mapping[str, Any]) -> ContainerStatus:
    """The status of a container from its ``docker inspect`` document.

    Args:
        info: The inspect document.
    """
    state = info.get("State") or {}
    labels = (info.get("Config") or {}).get("Labels") or {}
    host, port = published_port(info)
    return ContainerStatus(
        name=str(info.get("Name", "")).lstrip("/"),
        container_id=str(info.get("Id", "")),
        image=str((info.get("Config") or {}).get("Image", "")),
        state=str(state.get("Status", "")),
        status=describe_state(state),
        host=host,
        port=port,
        served_model_name=env_value(info, "NIM_SERVED_MODEL_NAME"),
        config_hash=labels.get(CONFIG_HASH_LABEL),
        deployment=labels.get(DEPLOYMENT_LABEL),
        replica=_replica(labels),
    )


def status_from_summary(item: Mapping[str, Any]) -> ContainerStatus:
    """The status of a container from its ``docker ps`` summary (labels, ports, names).

    Args:
        item: One entry of the engine's container list.
    """
    labels = item.get("Labels") or {}
    host = port = None
    for binding in item.get("Ports") or []:
        if binding.get("PrivatePort") == CONTAINER_PORT and binding.get("PublicPort"):
            host, port = binding.get("IP"), int(binding["PublicPort"])
            break
    names = item.get("Names") or []
    return ContainerStatus(
        name=str(names[0]).lstrip("/") if names else str(item.get("Id", ""))[:12],
        container_id=str(item.get("Id", "")),
        image=str(item.get("Image", "")),
        state=str(item.get("State", "")),
        status=str(item.get("Status", "")),
        host=host,
        port=port,
        served_model_name=labels.get(f"{LABEL_PREFIX}served_model_name"),
        config_hash=labels.get(CONFIG_HASH_LABEL),
        deployment=labels.get(DEPLOYMENT_LABEL),
        replica=_replica(labels),
    )
