"""``nim-async deploy``: pull and start a NIM container, wait until it is ready."""

from __future__ import annotations

import argparse
import sys

import orjson

from nim_async.cli.common import config_from_args, console
from nim_async.cli.parser import EXIT_OK, PROG
from nim_async.deploy.deployer import AsyncNIMDeployer
from nim_async.ui.deploy import ConsoleReporter

__all__ = ["deploy"]


async def deploy(args: argparse.Namespace) -> int:
    """Run ``nim-async deploy``: progress on stderr, the result on stdout (``--json``: JSON).

    Args:
        args: Parsed arguments (the deployment options, ``--quiet``, ``--json``).

    Returns:
        The exit status.
    """
    config = config_from_args(args)
    reporter = None if args.quiet else ConsoleReporter()
    async with AsyncNIMDeployer(config, quiet=args.quiet, on_event=reporter) as deployer:
        result = await deployer.deploy()
    if args.json:
        payload = result.model_dump(mode="json") | {"base_url": result.base_url}
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
        return EXIT_OK
    out = console()
    verb = "Reusing" if result.reused else "Deployed"
    out.print(
        f"[green]{verb}[/green] {result.container_name} ({result.container_id[:12]}) "
        f"serving {result.served_model_name or config.image_name} at [bold]{result.base_url}[/]"
    )
    out.print(f"Stop it with: {PROG} stop {result.container_name}")
    return EXIT_OK
