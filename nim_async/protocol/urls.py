"""A server's base URL, checked (no IO): what ``--url`` and ``endpoints=`` accept."""

from __future__ import annotations

import urllib.parse

__all__ = ["base_url_problem"]


def base_url_problem(url: str) -> str | None:
    """Why ``url`` is not a server's base URL (``http(s)://host[:port][/path]``), or ``None``.

    The reason never repeats the URL, so a caller can show it scrubbed of credentials.

    Args:
        url: The URL as given (surrounding blanks already stripped).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    if parts.query or parts.fragment:
        return "give the server's base URL, without ? or #"
    return None
