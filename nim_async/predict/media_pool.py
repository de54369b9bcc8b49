"""The worker threads images and videos are prepared in, and the size below which they are not.

One bounded pool for the whole process (created on first use, 2 to 8 threads by CPU count),
shared by :mod:`nim_async.predict.media` and :mod:`nim_async.predict.video`, so reading and
decoding files never blocks the event loop.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["INLINE_MAX_BYTES", "media_executor"]

INLINE_MAX_BYTES = 32 * 1024
"""Images (and videos) given as bytes up to this size are prepared on the event loop, not in a
worker thread: the thread hop (~50-80 us of CPU) costs more than the work it moves (a 180x180
JPEG: ~80 us, its validity check included; the worst 32 KiB JPEG ~0.4 ms). See
``benchmarks/README.md``."""

_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def media_executor() -> ThreadPoolExecutor:
    """The process-wide media worker pool, created on first use.

    Returns:
        A :class:`~concurrent.futures.ThreadPoolExecutor` of ``max(2, min(8, cpu_count))``
        threads named ``nim-async-media``.
    """
    global _EXECUTOR
    if _EXECUTOR is None:
        with _EXECUTOR_LOCK:
            if _EXECUTOR is None:
                workers = max(2, min(8, os.cpu_count() or 2))
                _EXECUTOR = ThreadPoolExecutor(workers, thread_name_prefix="nim-async-media")
    return _EXECUTOR
