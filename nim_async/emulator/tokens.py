"""Deterministic word-piece-like tokenisation used by the emulator for output and usage.

The pieces concatenate back to the text exactly. Words are split into pieces of at most four
letters carrying their leading space, digits are single pieces, punctuation is one piece per
character. No IO.
"""

from __future__ import annotations

import re

__all__ = ["count_tokens", "split_tokens"]

_PIECE = re.compile(r" ?(?:[^\W\d_]{1,4}|\d|[^\w\s]|_)|\s")


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into token pieces whose concatenation is ``text``.

    Args:
        text: Any text.

    Returns:
        The pieces, in order.
    """
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """Count the pieces :func:`split_tokens` would return, without building them all.

    Args:
        text: Any text.
    """
    return len(_PIECE.findall(text))
