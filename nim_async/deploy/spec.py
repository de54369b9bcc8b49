"""The NIM container as the Docker engine is asked for it, built from a :class:`NIMConfig`.

IO-free: :func:`container_spec` returns the engine's container-create body (environment,
labels, port binding, shared memory, mounts, GPU request, user), and the helpers below read
the same facts back from ``docker inspect`` / ``docker ps`` documents. Testable without Docker.

A deployment of ``NIMConfig(replicas=N)`` is N containers of one body each
(``container_spec(config, replica=i)``): replica ``i`` is named :func:`replica_name`
(``name`` for replica 0, ``name-r1`` ...), published on host port ``port + i``, given the GPUs
:func:`replica_gpus` assigns it, and labelled :data:`DEPLOYMENT_LABEL` = the deployment's name
(``config.container_name``), :data:`REPLICA_LABEL` = ``i``, :data:`REPLICAS_LABEL` = ``N``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nim_async.config import CONTAINER_CACHE_DIR, NIMConfig

__all__ = [
    "CONFIG_HASH_LABEL",
    "CONTAINER_PORT",
    "DEPLOYMENT_LABEL",
    "LABEL_PREFIX",
    "MANAGED_LABEL",
    "REPLICAS_LABEL",
    "REPLICA_LABEL",
    "ModelMount",
    "container_spec",
    "describe_state",
    "device_requests",
    "env_value",
    "published_port",
    "replica_gpus",
    "replica_name",
]

CONTAINER_PORT = 8000
"""The port the NIM listens on inside the container."""
MANAGED_LABEL = "nim_async.managed"
"""Label marking containers started by ``nim_async``."""
CONFIG_HASH_LABEL = "nim_async.config_hash"
"""Label holding :meth:`NIMConfig.config_hash` of the settings a container was started with."""
LABEL_PREFIX = "nim_async."
"""Prefix of every ``nim_async`` label."""
DEPLOYMENT_LABEL = "nim_async.deployment"
"""Label naming the deployment a container is a replica of (``NIMConfig.container_name``)."""
REPLICA_LABEL = "nim_async.replica"
"""Label holding the replica's index (``0`` .. ``replicas - 1``)."""
REPLICAS_LABEL = "nim_async.replicas"
"""Label holding how many replicas the deployment was started with."""


@dataclass(frozen=True)
class ModelMount:
    """A custom model directory to mount read-only and name through ``NIM_MODEL_NAME``.

    Attributes:
        host_dir: The directory on the host.
        container_dir: Where it appears inside the container.
    """

    host_dir: Path
    container_dir: str


def device_requests(gpus: Any) -> list[dict[str, Any]] | None:
    """The engine's ``DeviceRequests`` for ``NIMConfig.gpus``.

    Args:
        gpus: ``"all"``, a count, device ids, or ``None`` for no GPU request.

    Returns:
        One NVIDIA GPU request, or ``None`` when no GPU is asked for.
    """
    if gpus is None:
        return None
    request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]]}
    if gpus == "all":
        request["Count"] = -1
    elif isinstance(gpus, int):
        request["Count"] = gpus
    else:
        request["DeviceIDs"] = [str(g) for g in gpus]
    return [request]


def replica_name(deployment: str, replica: int) -> str:
    """The container name of replica ``replica`` of ``deployment``.

    Args:
        deployment: The deployment's name (``NIMConfig.container_name``).
        replica: The replica's index.

    Returns:
        ``deployment`` for replica 0 (a single container keeps its name), else
        ``{deployment}-r{replica}``.
    """
    return deployment if replica == 0 else f"{deployment}-r{replica}"


def replica_gpus(config: NIMConfig) -> list[Any]:
    """The ``gpus`` value of each replica of ``config`` (one entry per replica, in order).

    One replica keeps ``config.gpus`` as given (a single group becomes its device ids). With
    more: ``"all"`` gives replica ``i`` device ``i``; a count ``k`` gives it devices
    ``i*k .. i*k+k-1``; device ids are split evenly, in order; groups are taken one per replica;
    ``None`` is no GPU request for any.

    Args:
        config: The deployment configuration (``gpus``, ``replicas``).
    """
    n = config.replicas
    gpus: Any = config.gpus
    if gpus is None:
        return [None] * n
    if isinstance(gpus, list) and gpus and isinstance(gpus[0], list):
        return [list(group) for group in gpus]
    if n == 1:
        return [gpus]
    if gpus == "all":
        return [[str(i)] for i in range(n)]
    if isinstance(gpus, int):
        return [[str(d) for d in range(i * gpus, (i + 1) * gpus)] for i in range(n)]
    ids = [str(g) for g in gpus]
    per = len(ids) // n
    return [ids[i * per : (i + 1) * per] for i in range(n)]


def _mount(source: Path, target: str, *, read_only: bool) -> dict[str, Any]:
    return {
        "Type": "bind",
        "Source": str(source.resolve()),
        "Target": target,
        "ReadOnly": read_only,
    }


def container_spec(
    config: NIMConfig,
    *,
    cache_dir: Path,
    model: ModelMount | None = None,
    user: tuple[int, int],
    replica: int = 0,
) -> dict[str, Any]:
    """The container-create body for ``config`` (for one of its replicas).

    Args:
        config: The deployment configuration (its NGC key goes into the environment).
        cache_dir: The host cache directory, mounted read-write at ``CONTAINER_CACHE_DIR``.
        model: Custom weights to mount read-only, if any.
        user: ``(uid, gid)`` the container runs as (files in the cache stay the user's).
        replica: Which replica (``0`` .. ``config.replicas - 1``): its host port is
            ``config.port + replica`` and its GPUs are :func:`replica_gpus`'s entry.

    Returns:
        The body of ``POST /containers/create``.

    Raises:
        ValueError: If ``replica`` is not one of the config's replicas.
    """
    if not 0 <= replica < config.replicas:
        raise ValueError(f"replica must be 0 .. {config.replicas - 1}, got {replica}")
    env = [
        f"NGC_API_KEY={config.nvidia_api_key.get_secret_value()}",
        f"NIM_MAX_MODEL_LEN={config.max_model_len}",
    ]
    labels = {
        MANAGED_LABEL: "true",
        CONFIG_HASH_LABEL: config.config_hash(),
        f"{LABEL_PREFIX}image": config.image_ref,
        DEPLOYMENT_LABEL: config.container_name,
        REPLICA_LABEL: str(replica),
        REPLICAS_LABEL: str(config.replicas),
    }
    # Custom weights are served as served_model_name or image_name (as the seed-era vi-sdk
    # did), the name NIMPredictor(config=...) sends; NIM would otherwise name them by path.
    served = config.served_model_name or (config.image_name if model is not None else None)
    if served:
        env.append(f"NIM_SERVED_MODEL_NAME={served}")
        labels[f"{LABEL_PREFIX}served_model_name"] = served
    mounts = [_mount(cache_dir, CONTAINER_CACHE_DIR, read_only=False)]
    if model is not None:
        env.append(f"NIM_MODEL_NAME={model.container_dir}")
        mounts.append(_mount(model.host_dir, model.container_dir, read_only=True))
    host_config: dict[str, Any] = {
        "PortBindings": {
            f"{CONTAINER_PORT}/tcp": [
                {"HostIp": config.host, "HostPort": str(config.port + replica)}
            ]
        },
        "ShmSize": config.shm_size_bytes,
        "Mounts": mounts,
        "AutoRemove": False,
    }
    devices = device_requests(replica_gpus(config)[replica])
    if devices is not None:
        host_config["DeviceRequests"] = devices
    return {
        "Image": config.image_ref,
        "Env": env,
        "User": f"{user[0]}:{user[1]}",
        "ExposedPorts": {f"{CONTAINER_PORT}/tcp": {}},
        "Labels": labels,
        "HostConfig": host_config,
    }


def published_port(info: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The host address and port the NIM port is published on, from ``docker inspect``.

    Args:
        info: The container's inspect document.

    Returns:
        ``(host, port)``, either ``None`` when not published.
    """
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    entries = bindings.get(f"{CONTAINER_PORT}/tcp") or []
    if not entries:
        return None, None
    host = entries[0].get("HostIp") or "0.0.0.0"
    port = entries[0].get("HostPort")
    return host, int(port) if port else None


def env_value(info: Mapping[str, Any], name: str) -> str | None:
    """The value of environment variable ``name`` in a container's inspect document.

    Args:
        info: The container's inspect document.
        name: The variable.
    """
    for item in (info.get("Config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return None


def describe_state(state: Mapping[str, Any]) -> str:
    """A short human line for an inspect document's ``State`` (``exited (137, OOM-killed)``).

    Args:
        state: The ``State`` object.
    """
    status = str(state.get("Status", "unknown"))
    if status == "running":
        return f"running since {state.get('StartedAt', '?')}"
    if status == "exited":
        oom = ", OOM-killed" if state.get("OOMKilled") else ""
        return f"exited ({state.get('ExitCode', '?')}{oom}) at {state.get('FinishedAt', '?')}"
    return status
