"""The Kubernetes backend: a NIM as a NIM Operator NIMService, or a Deployment + Service.

Needs the optional extra ``nim-async[kubernetes]`` (``kubernetes_asyncio``; imported by
:mod:`nim_async.deploy.kubernetes.client` only). :class:`KubernetesBackend` is what
``AsyncNIMDeployer(config, backend="kubernetes", namespace=..., context=...)`` runs.
"""

from __future__ import annotations

from nim_async.deploy.kubernetes.backend import MODES, KubernetesBackend
from nim_async.deploy.kubernetes.manifests import KubeSettings

__all__ = ["MODES", "KubeSettings", "KubernetesBackend"]
