"""The console type of the library's own output (rich), for layers that may not import rich.

The blocking facade (``nim_async.sync``) names it in signatures; only ``nim_async.ui`` and the
CLI import rich itself.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["Console"]
