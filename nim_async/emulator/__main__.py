"""``python -m nim_async.emulator``: run the NIM emulator (a test double, not a model)."""

from __future__ import annotations

import sys

from nim_async.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
