"""``nim-async deploy``: pull and start a NIM container, wait until it is ready.

SIGTERM and SIGHUP (what ``timeout``, systemd and CI cancellation send, or a closed terminal)
cancel a running deploy like Ctrl-C does: the container it created is removed, then the command
exits 143 (SIGHUP: 129). With ``--port-forward`` the same signals after the deploy only close the
forward (the deployment keeps running), as Ctrl-C does. A signal whose disposition is not the
default (``nohup``'s ignored SIGHUP) is left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson

from nim_async.cli.common import config_from_args, console
from nim_async.cli.parser import EXIT_OK, PROG
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.results import NIMDeploymentResult
from nim_async.ui.deploy import ConsoleReporter

__all__ = ["CANCELLING_SIGNALS", "deploy"]

#: Signals that cancel a running deploy (besides SIGINT), with the exit status they give.
CANCELLING_SIGNALS: dict[int, int] = {
    signal.SIGTERM: 128 + signal.SIGTERM,
    **({signal.SIGHUP: 128 + signal.SIGHUP} if hasattr(signal, "SIGHUP") else {}),
}


@contextlib.contextmanager
def _cancel_on_signals(task: asyncio.Task[object]) -> Iterator[list[int]]:
    """While inside: SIGTERM/SIGHUP cancel ``task`` (once); yields the signals received."""
    received: list[int] = []
    installed: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not received:
            task.cancel()
        received.append(signum)

    if threading.current_thread() is threading.main_thread():
        for signum in CANCELLING_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_DFL:
                continue
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)  # back to SIG_DFL


async def deploy(args: argparse.Namespace) -> int:
    """Run ``nim-async deploy``: progress on stderr, the result on stdout (``--json``: JSON).

    Args:
        args: Parsed arguments (the deployment options, ``--quiet``, ``--json``).

    Returns:
        The exit status (143 / 129 when SIGTERM / SIGHUP cancelled the deploy).
    """
    task = asyncio.current_task()
    assert task is not None
    deployed: list[NIMDeploymentResult] = []
    with _cancel_on_signals(task) as received:
        try:
            return await _deploy(args, deployed)
        except asyncio.CancelledError:
            if not received:
                raise  # Ctrl-C: asyncio.run's own cancellation
            task.uncancel()
            name = signal.Signals(received[0]).name
            if deployed:  # the signal ended --port-forward's wait, not the deploy
                what = f"port-forward closed; {deployed[0].container_name} keeps running"
            else:
                what = "deploy cancelled (any container it created was removed)"
            sys.stderr.write(f"{PROG}: {name}: {what}\n")
            return CANCELLING_SIGNALS[received[0]]


async def _deploy(args: argparse.Namespace, deployed: list[NIMDeploymentResult]) -> int:
    config = config_from_args(args)
    reporter = None if args.quiet else ConsoleReporter()
    kube = kubernetes_options(args)
    async with AsyncNIMDeployer(config, quiet=args.quiet, on_event=reporter, **kube) as deployer:
        result = await deployer.deploy()
        deployed.append(result)
        if kube.get("port_forward"):  # the forward lives as long as the deployer: until Ctrl-C
            _print_result(args, config.image_name, result)
            if not args.quiet:
                console(stderr=True).print("Port-forward open; Ctrl-C closes it (the pods stay)")
            await asyncio.Event().wait()
    return _print_result(args, config.image_name, result)


def kubernetes_options(args: argparse.Namespace) -> dict[str, Any]:
    """The deployer's Kubernetes keywords from ``--kubernetes`` & co. (empty without it).

    Args:
        args: Parsed arguments.
    """
    if not getattr(args, "kubernetes", False):
        return {}
    options: dict[str, Any] = {
        "backend": "kubernetes",
        "namespace": args.namespace,
        "context": args.context,
        "kubeconfig": args.kubeconfig,
    }
    for name in ("port_forward", "url"):
        if hasattr(args, name):
            options[name] = getattr(args, name)
    return options


def _print_result(args: argparse.Namespace, image_name: str, result: NIMDeploymentResult) -> int:
    if args.json:
        payload = result.model_dump(mode="json") | {"base_url": result.base_url}
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
        sys.stdout.flush()
        return EXIT_OK
    out = console()
    verb = "Reusing" if result.reused else "Deployed"
    if len(result.endpoints) > 1:
        out.print(
            f"[green]{verb}[/green] {result.container_name} ({len(result.endpoints)} replicas) "
            f"serving {result.served_model_name or image_name} at "
            + ", ".join(f"[bold]{url}[/]" for url in result.endpoints)
        )
    else:
        out.print(
            f"[green]{verb}[/green] {result.container_name} ({result.container_id[:12]}) "
            f"serving {result.served_model_name or image_name} at [bold]{result.base_url}[/]"
        )
    where = ""
    if getattr(args, "kubernetes", False):
        where = f" --kubernetes --namespace {args.namespace}"
    out.print(f"Stop it with: {PROG} stop {result.container_name}{where}")
    return EXIT_OK
