"""``python -m nim_async.bench``."""

from nim_async.bench.cli import main

raise SystemExit(main())
