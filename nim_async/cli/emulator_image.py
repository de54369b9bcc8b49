"""``nim-async emulator-image``: build the emulator's container image (for Docker tests)."""

from __future__ import annotations

import argparse
import sys

from nim_async.cli.common import console
from nim_async.cli.parser import EXIT_OK
from nim_async.devtools.emulator_image import build_emulator_image

__all__ = ["emulator_image"]


async def emulator_image(args: argparse.Namespace) -> int:
    """Run ``nim-async emulator-image``.

    Args:
        args: Parsed arguments (``--tag``, ``--quiet``: print only the image id).

    Returns:
        The exit status.
    """
    image_id = await build_emulator_image(args.tag, quiet=args.quiet)
    if args.quiet:
        sys.stdout.write(image_id + "\n")
    else:
        console().print(
            f"Built [bold]{args.tag}[/] ({image_id[:19]}): the NIM emulator for tests, not a model"
        )
    return EXIT_OK
