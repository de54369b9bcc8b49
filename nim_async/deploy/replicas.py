"""A deployment's replica set, planned and judged without IO.

``NIMConfig(replicas=N)`` is N containers of one image and config, deployed as one. This module
says who the members are and decides what to do with the ones that already exist; the Docker
calls are :mod:`nim_async.deploy.containers`'s, the container bodies (labels, the GPUs of each
replica) :func:`nim_async.deploy.spec.container_spec`'s.

* :func:`plan_replicas`: each replica's container name (``name``, ``name-r1`` ...), host port
  (``port + i``) and URL; :func:`reused_replicas` the same read back from running containers.
* :func:`existing_set_action`: reuse the set only when every replica runs and no other does,
  else replace it (``auto_kill_existing_container``) or refuse with :func:`exists_error`, whose
  message names only the settings that would change things.
* :func:`reuse_notice`: the note when a reused set was started with other settings.
* :func:`stop_scope`: which deployment ``stop(name)`` removes as a whole.
* :func:`name_failed_replica`: a replica's failure says which replica it was.

``replicas=1`` is the single container it always was: its name, port and messages are those of
a deployer without replicas.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nim_async.config import NIMConfig
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    REPLICA_LABEL,
    published_port,
    replica_name,
)
from nim_async.errors import ContainerExistsError, NIMError
from nim_async.results import NIMDeploymentResult

__all__ = [
    "ExistingSetAction",
    "Replica",
    "container_name",
    "describe_member",
    "existing_set_action",
    "exists_advice",
    "exists_error",
    "in_replica_order",
    "is_ours",
    "is_running",
    "labels_of",
    "name_failed_replica",
    "plan_replicas",
    "reuse_notice",
    "reused_replicas",
    "set_exists_advice",
    "set_runs",
    "stop_scope",
]


@dataclass(frozen=True)
class Replica:
    """One member of a deployment: where it is published and what it is called.

    Attributes:
        index: Its index, ``0`` .. ``count - 1``.
        count: How many replicas the deployment has.
        name: Its container name (:func:`~nim_async.deploy.spec.replica_name`).
        host: The host address its port is published on.
        port: Its host port.
        url: The base URL it serves at from this host.
    """

    index: int
    count: int
    name: str
    host: str
    port: int
    url: str

    @property
    def which(self) -> str:
        """`` (replica i of n)`` for a member of a set, ``""`` for a single container."""
        return f" (replica {self.index} of {self.count})" if self.count > 1 else ""


def plan_replicas(config: NIMConfig) -> list[Replica]:
    """The replicas a deploy of ``config`` starts, replica 0 first.

    Args:
        config: The deployment configuration (``container_name``, ``host``, ``port``,
            ``replicas``).

    Returns:
        Replica ``i`` named :func:`~nim_async.deploy.spec.replica_name`, on host port
        ``config.port + i``.
    """
    n = config.replicas
    return [
        Replica(
            index=i,
            count=n,
            name=replica_name(config.container_name, i),
            host=config.host,
            port=config.port + i,
            url=config.replica_base_url(i),
        )
        for i in range(n)
    ]


def reused_replicas(config: NIMConfig, infos: Sequence[Mapping[str, Any]]) -> list[Replica]:
    """The replicas of a running set, as published (a port missing falls back to the plan's).

    Args:
        config: The deployment configuration.
        infos: The inspect documents of the set, in replica order.
    """
    replicas = []
    for replica, info in zip(plan_replicas(config), infos, strict=True):
        host, port = published_port(info)
        port = port or replica.port
        host = host or config.host
        url = NIMDeploymentResult(container_id="", container_name="", port=port, host=host).base_url
        replicas.append(
            Replica(
                index=replica.index,
                count=replica.count,
                name=replica.name,
                host=host,
                port=port,
                url=url,
            )
        )
    return replicas


def in_replica_order(
    found: Sequence[Mapping[str, Any]], replicas: Sequence[Replica]
) -> list[Mapping[str, Any]]:
    """The inspect documents of ``replicas``, in replica order, picked from ``found`` by name.

    Args:
        found: The deployment's containers (every replica's among them: see :func:`set_runs`).
        replicas: The replicas.

    Raises:
        KeyError: If a replica has no container in ``found``.
    """
    by_name = {container_name(info): info for info in found}
    return [by_name[replica.name] for replica in replicas]


def container_name(info: Mapping[str, Any]) -> str:
    """The container's name from its inspect document (without the engine's leading ``/``).

    Args:
        info: The inspect document.
    """
    return str(info.get("Name", "")).lstrip("/")


def labels_of(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The container's labels from its inspect document (empty when it has none).

    Args:
        info: The inspect document.
    """
    labels: Mapping[str, Any] = (info.get("Config") or {}).get("Labels") or {}
    return labels


def is_ours(info: Mapping[str, Any]) -> bool:
    """Whether an inspected container was started by nim_async (it carries our label).

    Args:
        info: The inspect document.
    """
    return labels_of(info).get(MANAGED_LABEL) == "true"


def is_running(info: Mapping[str, Any]) -> bool:
    """Whether an inspected container runs.

    Args:
        info: The inspect document.
    """
    return bool((info.get("State") or {}).get("Running"))


def set_runs(found: Sequence[Mapping[str, Any]], names: Sequence[str]) -> bool:
    """Whether ``found`` is exactly the running set of replicas nim_async started.

    Args:
        found: The inspect documents of the deployment's existing containers.
        names: The replicas' container names.

    Returns:
        ``True`` when every name is a running container with our label and no other container
        belongs to the deployment.
    """
    if len(found) != len(names):
        return False
    by_name = {container_name(info): info for info in found}
    return all(
        name in by_name and is_running(by_name[name]) and is_ours(by_name[name]) for name in names
    )


class ExistingSetAction(enum.Enum):
    """What a deploy does with the containers of its deployment that already exist."""

    REUSE = "reuse"
    """The whole set runs and may be reused: wait until it is ready and report it."""
    REPLACE = "replace"
    """Remove them all (``auto_kill_existing_container``), then start the set."""
    REFUSE = "refuse"
    """Raise :func:`exists_error`."""


def existing_set_action(
    config: NIMConfig, found: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> ExistingSetAction:
    """Decide what to do with a deployment's existing containers.

    Args:
        config: The deployment configuration (``use_existing_container``,
            ``auto_kill_existing_container``).
        found: The inspect documents of the existing containers (not empty).
        names: The replicas' container names.
    """
    if config.use_existing_container and set_runs(found, names):
        return ExistingSetAction.REUSE
    if config.auto_kill_existing_container:
        return ExistingSetAction.REPLACE
    return ExistingSetAction.REFUSE


def exists_advice(config: NIMConfig, info: Mapping[str, Any]) -> str:
    """The ContainerExistsError message for one container: only settings that would change things.

    Args:
        config: The deployment configuration.
        info: The existing container's inspect document.
    """
    name = config.container_name
    state = info.get("State") or {}
    fixes = ["set auto_kill_existing_container=True to replace it"]
    if not is_running(info):
        what = f"exists but is not running (status {state.get('Status') or 'unknown'})"
    elif not is_ours(info):
        what = (
            f"is running but was not started by nim_async (it has no {MANAGED_LABEL} label), "
            "so it is not reused"
        )
        fixes.append("choose another served_model_name")
    else:  # running, ours: reuse was switched off
        what = "is running"
        fixes.insert(0, "set use_existing_container=True to reuse it")
    return (
        f"A container named {name!r} {what}. To go on: {', '.join(fixes)}, or remove it with "
        f"NIMDeployer.stop({name!r}) (nim-async stop {name})."
    )


def describe_member(info: Mapping[str, Any]) -> str:
    """``name (running)``, ``name (exited, not started by nim_async ...)``: one existing member.

    Args:
        info: The container's inspect document.
    """
    state = info.get("State") or {}
    what = "running" if is_running(info) else str(state.get("Status") or "unknown")
    if not is_ours(info):
        what += f", not started by nim_async (no {MANAGED_LABEL} label)"
    return f"{container_name(info)} ({what})"


def set_exists_advice(
    config: NIMConfig, found: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> str:
    """The ContainerExistsError message for a set of replicas that may not be reused.

    Args:
        config: The deployment configuration.
        found: The inspect documents of the deployment's existing containers.
        names: The replicas' container names.
    """
    name = config.container_name
    reusable = set_runs(found, names)
    fixes = ["set auto_kill_existing_container=True to replace them"]
    if reusable:  # the whole set runs: reuse was switched off
        fixes.insert(0, "set use_existing_container=True to reuse them")
    return (
        f"Deployment {name!r} (replicas={config.replicas}: {', '.join(names)}) has existing "
        f"containers: {', '.join(describe_member(i) for i in found)}"
        + ("" if reusable else "; a set is reused only when every replica runs and no other does")
        + f". To go on: {', '.join(fixes)}, or remove them with NIMDeployer.stop({name!r}) "
        f"(nim-async stop {name})."
    )


def exists_error(
    config: NIMConfig, found: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> ContainerExistsError:
    """The error a deploy raises when existing containers may be neither reused nor removed.

    Args:
        config: The deployment configuration.
        found: The inspect documents of the deployment's existing containers (not empty).
        names: The replicas' container names.

    Returns:
        The error naming the first container found, with :func:`exists_advice` for one
        container, :func:`set_exists_advice` for a set.
    """
    first = container_name(found[0]) or config.container_name
    if len(names) == 1 and len(found) == 1:
        return ContainerExistsError(first, exists_advice(config, found[0]))
    return ContainerExistsError(first, set_exists_advice(config, found, names))


def reuse_notice(
    config: NIMConfig, replicas: Sequence[Replica], infos: Sequence[Mapping[str, Any]]
) -> str | None:
    """The note for a reused set whose containers were started with other settings, if any.

    Args:
        config: The deployment configuration.
        replicas: The set's replicas.
        infos: Their inspect documents, in the same order.

    Returns:
        ``None`` when every container carries ``config``'s hash (or none at all).
    """
    changed = [
        replica.name
        for replica, info in zip(replicas, infos, strict=True)
        if labels_of(info).get(CONFIG_HASH_LABEL) not in (None, config.config_hash())
    ]
    if not changed:
        return None
    what = (
        f"the running container {changed[0]} was"
        if len(replicas) == 1
        else f"the running containers {', '.join(changed)} were"
    )
    return (
        f"{what} started with different settings; "
        "reusing anyway (auto_kill_existing_container=True and "
        "use_existing_container=False replace it)"
    )


def stop_scope(info: Mapping[str, Any] | None, name: str) -> str | None:
    """The deployment whose every replica ``stop(name)`` removes, if any.

    Args:
        info: The inspect document of the container called ``name``, or ``None`` if none is.
        name: The name or id ``stop`` was given.

    Returns:
        The deployment label of a deployment's replica 0 that nim_async started; ``name`` when no
        container has that name (its replicas may remain); ``None`` for any other container.
    """
    if info is None:
        return name
    labels = labels_of(info)
    replica = str(labels.get(REPLICA_LABEL) or "0")
    if replica == "0" and is_ours(info):
        deployment: str | None = labels.get(DEPLOYMENT_LABEL)
        return deployment
    return None


def name_failed_replica(exc: BaseException, replica: Replica, *, created: bool = True) -> None:
    """Say in ``exc``'s message which replica failed (no change for a single container).

    Args:
        exc: The failure; only a :class:`~nim_async.errors.NIMError` with one argument (its
            message) is changed.
        replica: The replica that failed.
        created: Whether the deploy created the set (then it removes it all) or reused it.
    """
    n = replica.count
    if n == 1 or not isinstance(exc, NIMError) or len(exc.args) != 1:
        return
    after = (
        f", so the deploy removes all {n} containers it created"
        if created
        else " (the running replicas were left as they are)"
    )
    exc.args = (
        f"Replica {replica.index} of {n} ({replica.name!r}, host port {replica.port}) "
        f"failed{after}: {exc.args[0]}",
    )
