"""The Kubernetes objects a NIM deployment consists of, built from a :class:`NIMConfig` (IO-free).

Every object carries the ``nim_async`` labels (:func:`labels`), so that ``stop`` can find and
remove all of them:

* :func:`pull_secret`: the NGC image-pull secret (``kubernetes.io/dockerconfigjson``, user
  ``$oauthtoken`` and the key as password);
* :func:`api_key_secret`: the ``NGC_API_KEY`` secret the container (or the NIM Operator's
  ``authSecret``) reads;
* :func:`nim_service`: a NIM Operator ``NIMService`` (``apps.nvidia.com/v1alpha1``), used when
  the operator's CRD is installed;
* :func:`deployment` + :func:`service`: the same settings as a plain Deployment and ClusterIP
  Service (shared memory as a memory-backed ``emptyDir`` of ``shm_size``, a cache volume, a
  readiness probe on ``/v1/health/ready``, ``runAsUser``), used otherwise.

The secrets' bodies hold the key (base64, as the API wants it); nothing here logs or prints them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import orjson

from nim_async.config import CONTAINER_CACHE_DIR, NIMConfig
from nim_async.deploy.spec import CONFIG_HASH_LABEL, CONTAINER_PORT, MANAGED_LABEL, replica_gpus
from nim_async.errors import InvalidConfigError

__all__ = [
    "HEALTH_PATH",
    "INSTANCE_LABEL",
    "NIMSERVICE_GROUP",
    "NIMSERVICE_PLURAL",
    "NIMSERVICE_VERSION",
    "REGISTRY_USER",
    "KubeSettings",
    "api_key_secret",
    "deployment",
    "gpu_count",
    "labels",
    "nim_service",
    "object_name",
    "pull_secret",
    "replicas_of",
    "selector",
    "service",
]

NIMSERVICE_GROUP = "apps.nvidia.com"
"""API group of the NIM Operator's custom resources."""
NIMSERVICE_VERSION = "v1alpha1"
"""Version of the NIMService resource this module writes."""
NIMSERVICE_PLURAL = "nimservices"
"""Plural (URL) name of the NIMService resource."""
INSTANCE_LABEL = "nim_async.instance"
"""Label naming the deployment an object belongs to (the object name)."""
HEALTH_PATH = "/v1/health/ready"
"""The NIM's readiness endpoint."""
REGISTRY_USER = "$oauthtoken"
"""The user name NGC's registry expects (literally)."""
GPU_RESOURCE = "nvidia.com/gpu"
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class KubeSettings:
    """Where and how to run on Kubernetes, beside the :class:`NIMConfig`.

    Attributes:
        namespace: The namespace every object is created in.
        run_as: ``(uid, gid)`` the NIM container runs as (NIM images use 1000 / 2000).
        cache_pvc: An existing PersistentVolumeClaim for the model cache; ``None`` uses an
            ``emptyDir`` (the cache lives as long as the pod).
        service_type: Type of the Service in front of the pods (``ClusterIP``, ``NodePort``).
    """

    namespace: str = "default"
    run_as: tuple[int, int] = (1000, 2000)
    cache_pvc: str | None = None
    service_type: str = "ClusterIP"


def object_name(config: NIMConfig) -> str:
    """The name of the deployment's objects: ``config.container_name`` as a DNS-1123 label.

    Args:
        config: The deployment configuration.

    Raises:
        InvalidConfigError: If nothing of the name is left.
    """
    name = _NAME_BAD.sub("-", config.container_name.lower()).strip("-")[:50].rstrip("-")
    if not name or not name[0].isalpha():
        raise InvalidConfigError(
            f"{config.container_name!r} cannot name Kubernetes objects (a DNS-1123 label "
            "starting with a letter is needed); set served_model_name",
            field="served_model_name",
        )
    return name


def labels(config: NIMConfig) -> dict[str, str]:
    """The labels every object of the deployment carries.

    Args:
        config: The deployment configuration.
    """
    return {
        MANAGED_LABEL: "true",
        INSTANCE_LABEL: object_name(config),
        CONFIG_HASH_LABEL: config.config_hash()[:63],
        "app.kubernetes.io/managed-by": "nim-async",
    }


def selector(config: NIMConfig) -> str:
    """The label selector matching every object of the deployment (``stop`` uses it).

    Args:
        config: The deployment configuration.
    """
    return f"{MANAGED_LABEL}=true,{INSTANCE_LABEL}={object_name(config)}"


def _meta(config: NIMConfig, settings: KubeSettings, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": settings.namespace, "labels": labels(config)}


def pull_secret_name(config: NIMConfig) -> str:
    """Name of the image-pull secret.

    Args:
        config: The deployment configuration.
    """
    return f"{object_name(config)}-ngc-pull"


def api_key_secret_name(config: NIMConfig) -> str:
    """Name of the API-key secret.

    Args:
        config: The deployment configuration.
    """
    return f"{object_name(config)}-ngc-api"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pull_secret(config: NIMConfig, settings: KubeSettings) -> dict[str, Any]:
    """The NGC image-pull secret (``$oauthtoken`` and the key) for ``config.registry_server``.

    Args:
        config: The deployment configuration (its key goes into the body).
        settings: Namespace and the rest.
    """
    key = config.nvidia_api_key.get_secret_value()
    auth = {
        "username": REGISTRY_USER,
        "password": key,
        "auth": _b64(f"{REGISTRY_USER}:{key}"),
    }
    docker_config = orjson.dumps({"auths": {config.registry_server: auth}}).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(config, settings, pull_secret_name(config)),
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": _b64(docker_config)},
    }


def api_key_secret(config: NIMConfig, settings: KubeSettings) -> dict[str, Any]:
    """The secret holding ``NGC_API_KEY`` (the NIM Operator's ``authSecret`` format).

    Args:
        config: The deployment configuration (its key goes into the body).
        settings: Namespace and the rest.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(config, settings, api_key_secret_name(config)),
        "type": "Opaque",
        "data": {"NGC_API_KEY": _b64(config.nvidia_api_key.get_secret_value())},
    }


def gpu_count(config: NIMConfig) -> int | None:
    """How many ``nvidia.com/gpu`` each pod asks for: ``"all"`` is one GPU on Kubernetes.

    Kubernetes gives every pod of a Deployment the same resources and picks the devices itself,
    so with several replicas each pod asks for its share (:func:`~nim_async.deploy.spec.
    replica_gpus`: ``"all"`` one, a count ``k`` ``k``, device ids split evenly, a group its
    size); device ids only say how many.

    Args:
        config: The deployment configuration (``gpus``, ``replicas``).

    Returns:
        The count, or ``None`` for no GPU request.

    Raises:
        InvalidConfigError: For GPU groups of different sizes (pods cannot differ here).
    """
    shares: list[Any] = replica_gpus(config)
    first = shares[0]
    if first is None:
        return None
    if first == "all":
        return 1
    if isinstance(first, int):
        return first
    sizes = sorted({len(share) for share in shares})
    if len(sizes) > 1:
        raise InvalidConfigError(
            f"gpus gives groups of {' and '.join(map(str, sizes))} GPUs; on Kubernetes every "
            "replica (pod) asks for the same number: give groups of one size or a count",
            field="gpus",
        )
    return len(first)


def replicas_of(config: NIMConfig) -> int:
    """``config.replicas``: the Deployment's (or NIMService's) ``replicas``.

    Args:
        config: The deployment configuration.
    """
    return max(1, int(config.replicas))


def _env(config: NIMConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "NIM_MAX_MODEL_LEN", "value": str(config.max_model_len)},
    ]
    if config.served_model_name:
        env.append({"name": "NIM_SERVED_MODEL_NAME", "value": config.served_model_name})
    return env


def _probe() -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": CONTAINER_PORT},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


def _resources(config: NIMConfig) -> dict[str, Any]:
    count = gpu_count(config)
    return {} if count is None else {"limits": {GPU_RESOURCE: str(count)}}


def _pull_policy(config: NIMConfig) -> str:
    return "Always" if config.force_pull else "IfNotPresent"


def nim_service(config: NIMConfig, settings: KubeSettings) -> dict[str, Any]:
    """The NIM Operator's NIMService for ``config``.

    Args:
        config: The deployment configuration.
        settings: Namespace, user, cache claim, service type.

    Returns:
        The custom object's body (``apps.nvidia.com/v1alpha1``, kind ``NIMService``).
    """
    repository = f"{config.registry}/{config.image_name}"
    storage: dict[str, Any] = {"sharedMemorySizeLimit": str(config.shm_size_bytes)}
    if settings.cache_pvc:
        storage["pvc"] = {"name": settings.cache_pvc, "create": False}
    else:
        storage["emptyDir"] = {}
    spec: dict[str, Any] = {
        "image": {
            "repository": repository,
            "tag": config.tag,
            "pullPolicy": _pull_policy(config),
            "pullSecrets": [pull_secret_name(config)],
        },
        "authSecret": api_key_secret_name(config),
        "env": _env(config),
        "storage": storage,
        "replicas": replicas_of(config),
        "userID": settings.run_as[0],
        "groupID": settings.run_as[1],
        "expose": {"service": {"type": settings.service_type, "port": CONTAINER_PORT}},
        "readinessProbe": {"enabled": True, "probe": _probe()},
        "labels": labels(config),
    }
    resources = _resources(config)
    if resources:
        spec["resources"] = resources
    return {
        "apiVersion": f"{NIMSERVICE_GROUP}/{NIMSERVICE_VERSION}",
        "kind": "NIMService",
        "metadata": _meta(config, settings, object_name(config)),
        "spec": spec,
    }


def deployment(config: NIMConfig, settings: KubeSettings) -> dict[str, Any]:
    """A Deployment with the settings the Docker path uses (for clusters without the operator).

    Args:
        config: The deployment configuration.
        settings: Namespace, user, cache claim.

    Returns:
        The ``apps/v1`` Deployment body.
    """
    name = object_name(config)
    meta_labels = labels(config)
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": settings.cache_pvc}}
        if settings.cache_pvc
        else {"emptyDir": {}}
    )
    env = [
        {
            "name": "NGC_API_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": api_key_secret_name(config), "key": "NGC_API_KEY"}
            },
        },
        *_env(config),
    ]
    container: dict[str, Any] = {
        "name": "nim",
        "image": config.image_ref,
        "imagePullPolicy": _pull_policy(config),
        "env": env,
        "ports": [{"name": "api", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe(),
        "resources": _resources(config),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "nim-cache", "mountPath": CONTAINER_CACHE_DIR},
        ],
    }
    uid, gid = settings.run_as
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(config, settings, name),
        "spec": {
            "replicas": replicas_of(config),
            "selector": {"matchLabels": {INSTANCE_LABEL: name, MANAGED_LABEL: "true"}},
            "template": {
                "metadata": {"labels": meta_labels},
                "spec": {
                    "imagePullSecrets": [{"name": pull_secret_name(config)}],
                    "securityContext": {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid},
                    "terminationGracePeriodSeconds": 10,
                    "automountServiceAccountToken": False,  # the NIM needs no API access
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "dshm",
                            "emptyDir": {
                                "medium": "Memory",
                                "sizeLimit": str(config.shm_size_bytes),
                            },
                        },
                        {"name": "nim-cache", **cache},
                    ],
                },
            },
        },
    }


def service(config: NIMConfig, settings: KubeSettings) -> dict[str, Any]:
    """The Service in front of the Deployment's pods (port 8000).

    Args:
        config: The deployment configuration.
        settings: Namespace and service type.
    """
    name = object_name(config)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(config, settings, name),
        "spec": {
            "type": settings.service_type,
            "selector": {INSTANCE_LABEL: name, MANAGED_LABEL: "true"},
            "ports": [{"name": "api", "port": CONTAINER_PORT, "targetPort": CONTAINER_PORT}],
        },
    }


def cluster_url(name: str, namespace: str) -> str:
    """The in-cluster URL of the NIM behind Service ``name``.

    Args:
        name: The Service name.
        namespace: Its namespace.
    """
    return f"http://{name}.{namespace}.svc.cluster.local:{CONTAINER_PORT}"
