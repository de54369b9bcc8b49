"""Deployment: everything between a :class:`~nim_async.config.NIMConfig` and a serving container.

* :mod:`~nim_async.deploy.deployer`: :class:`AsyncNIMDeployer` (pull, weights, start, wait).
* :mod:`~nim_async.deploy.docker`: the Docker adapter, the only ``aiodocker`` user.
* :mod:`~nim_async.deploy.spec`: the container-create body (IO-free).
* :mod:`~nim_async.deploy.status`: ``ContainerStatus`` from inspect / ps documents (IO-free).
* :mod:`~nim_async.deploy.events`: what a deploy reports (progress, logs, state), drawn by
  :mod:`nim_async.ui`.
* :mod:`~nim_async.deploy.weights`: custom weights (Vi download, archive, pre-flight).
"""
