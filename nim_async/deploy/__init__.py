"""Deployment: everything between a :class:`~nim_async.config.NIMConfig` and a serving container.

* :mod:`~nim_async.deploy.deployer`: :class:`AsyncNIMDeployer` (pull, weights, start, wait).
* :mod:`~nim_async.deploy.replicas`: a deployment's replica set, planned and judged (IO-free):
  names, ports, URLs, reuse / replace / refuse of existing containers.
* :mod:`~nim_async.deploy.containers`: the set on Docker: found, created and started together
  (a failure removes every container created), stopped.
* :mod:`~nim_async.deploy.watch`: one starting container: ready, exited or out of time; its logs.
* :mod:`~nim_async.deploy.concurrency`: all-or-nothing steps; :mod:`~nim_async.deploy.ports`:
  the host ports checked free; :mod:`~nim_async.deploy.timings`: marks of the last deploy.
* :mod:`~nim_async.deploy.docker`: the Docker adapter, the only ``aiodocker`` user.
* :mod:`~nim_async.deploy.spec`: the container-create body (IO-free).
* :mod:`~nim_async.deploy.status`: ``ContainerStatus`` from inspect / ps documents (IO-free).
* :mod:`~nim_async.deploy.events`: what a deploy reports (progress, logs, state), drawn by
  :mod:`nim_async.ui`.
* :mod:`~nim_async.deploy.weights`: custom weights (Vi download, archive, pre-flight).
"""
