"""The one identity of a batch input: what tells two inputs apart across runs.

:func:`source_identity` is the key :class:`~nim_async.predict.journal.BatchJournal` records and
resumes by: a local path is its resolved absolute path (so ``images/a.png``, ``./images/a.png``
and ``/data/images/a.png`` are one input), a URL is the URL as given, bytes are their SHA-256.
:func:`source_label` is the short text a record and a message show (the path or URL as given).
"""

from __future__ import annotations

import hashlib
import os
from os import PathLike

__all__ = ["describe_source", "is_url", "source_identity", "source_label"]

_URL_SCHEMES = ("http://", "https://", "data:")


def is_url(text: str) -> bool:
    """Whether ``text`` is an ``http(s)://`` or ``data:`` URL (not a local path).

    Args:
        text: A source string.
    """
    return text[:8].lower().startswith(_URL_SCHEMES)


def source_identity(source: object) -> str:
    """The canonical identity of a batch input.

    Args:
        source: A path (``str`` or path-like), a URL, bytes or an image.

    Returns:
        The resolved absolute path of a local path (symlinks followed, whether or not the file
        exists), the URL as given, ``sha256:<hex>`` of bytes, else :func:`source_label`.
    """
    if isinstance(source, str):
        return source if is_url(source) else os.path.realpath(source)
    if isinstance(source, PathLike):
        return os.path.realpath(str(os.fspath(source)))
    if isinstance(source, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(source).hexdigest()
    return source_label(source)


def source_label(source: object) -> str:
    """A short text naming ``source`` for records and messages (path or URL as given).

    Args:
        source: A path, URL, bytes or image.
    """
    if isinstance(source, str):
        return source
    if isinstance(source, PathLike):
        return str(os.fspath(source))
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    size = getattr(source, "size", None)
    if isinstance(size, tuple):
        return f"<{type(source).__name__} {size[0]}x{size[1]}>"
    return f"<{type(source).__name__}>"


def describe_source(source: object) -> str:
    """:func:`source_label`, shortened for an error message (never a source's bytes).

    A data URI is named by its length and text over 200 characters is cut.

    Args:
        source: Any source value.
    """
    if isinstance(source, str):
        if source.startswith("data:"):
            return f"data URI ({len(source)} characters)"
        return source if len(source) <= 200 else source[:197] + "..."
    return source_label(source)
