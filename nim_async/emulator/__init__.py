"""The embedded NIM emulator: a NIM-compatible HTTP server that is a test double, not a model.

Run it in-process (``async with Emulator(...) as emu: emu.url``) or as a command
(``nim-async emulate`` / ``python -m nim_async.emulator``).
"""

from __future__ import annotations

from nim_async.emulator.server import OWNED_BY, Emulator, EmulatorStartupError
from nim_async.emulator.settings import DIALECTS, Dialect, EmulatorSettings

__all__ = [
    "DIALECTS",
    "OWNED_BY",
    "Dialect",
    "Emulator",
    "EmulatorSettings",
    "EmulatorStartupError",
]
