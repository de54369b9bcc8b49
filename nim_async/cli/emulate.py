"""``nim-async emulate``: the embedded NIM emulator (a test double, not a model).

Its options belong to :mod:`nim_async.emulator.cli`; everything after ``emulate`` goes there.
"""

from __future__ import annotations

from nim_async.emulator import cli as emulator_cli

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run ``nim-async emulate ARGS...``.

    Args:
        argv: The arguments after ``emulate``.

    Returns:
        The emulator command's exit status.
    """
    return int(emulator_cli.main(argv))
