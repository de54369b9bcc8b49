"""Secret scrubbing: the one place that hides secrets in text shown to people.

Every message that may carry a secret (engine errors echoing a registry password, container logs
printing ``NGC_API_KEY``, a Vi API error body, a pre-signed URL) passes through here before it
reaches a log, an exception, a repr or the console.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

__all__ = ["MASK", "Scrubber", "scrub", "strip_query"]

MASK = "***"
"""What a secret is replaced with."""

Secret = str | SecretStr | None


def _reveal(secret: Secret) -> str:
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    return secret or ""


def scrub(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every occurrence of each secret in ``text`` with :data:`MASK`.

    Args:
        text: The text to clean.
        secrets: Plain strings or :class:`~pydantic.SecretStr` values; empty ones and ``None``
            are ignored.

    Returns:
        ``text`` without the secrets.
    """
    # Longest first: a secret that contains another must not be left half masked.
    for value in sorted({_reveal(s) for s in secrets} - {""}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


class Scrubber:
    """A growing set of secrets and the :func:`scrub` over them.

    Args:
        secrets: The secrets known from the start.
    """

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: Secret) -> None:
        """Hide ``secret`` too, from now on.

        Args:
            secret: The text to hide (empty and ``None`` are ignored).
        """
        value = _reveal(secret)
        if value and value not in self._secrets:
            self._secrets.append(value)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every known secret masked."""
        return scrub(text, self._secrets)

    def __repr__(self) -> str:
        return f"Scrubber({len(self._secrets)} secrets)"


def strip_query(url: str) -> str:
    """Return ``url`` without its query and fragment (a pre-signed URL's signature).

    Args:
        url: Any URL.
    """
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
