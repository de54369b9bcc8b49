"""``nim-async stop``: stop and remove a NIM container."""

from __future__ import annotations

import argparse

from nim_async.cli.common import console
from nim_async.cli.parser import EXIT_FAILED, EXIT_OK, PROG
from nim_async.deploy.deployer import AsyncNIMDeployer

__all__ = ["stop"]


async def stop(args: argparse.Namespace) -> int:
    """Run ``nim-async stop NAME``.

    Args:
        args: Parsed arguments (``name``, ``--quiet``).

    Returns:
        0 when the container was stopped and removed, 1 when there was none.
    """
    from nim_async.cli.deploy import kubernetes_options

    stopped = await AsyncNIMDeployer.stop(args.name, quiet=True, **kubernetes_options(args))
    if stopped:
        if not args.quiet:
            console().print(f"Stopped and removed {args.name}")
        return EXIT_OK
    if not args.quiet:
        console(stderr=True).print(f"{PROG}: no container named {args.name!r} was running")
    return EXIT_FAILED
