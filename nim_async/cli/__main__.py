"""``python -m nim_async.cli``: the ``nim-async`` command."""

import sys

from nim_async.cli import main

sys.exit(main())
