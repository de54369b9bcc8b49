"""Registry credentials as the Docker engine takes them (``X-Registry-Auth``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import orjson
from pydantic import SecretStr

__all__ = ["RegistryAuth", "split_ref"]


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry server, sent to the engine as ``X-Registry-Auth``.

    Attributes:
        server: The registry login server (``nvcr.io``, ``127.0.0.1:5000``).
        username: The user name (``$oauthtoken`` for NGC).
        password: The password (the NGC API key); never shown in ``repr``.
    """

    server: str
    username: str
    password: SecretStr = field(repr=False)

    def as_dict(self) -> dict[str, str]:
        """The credentials as the engine's auth-config JSON object."""
        return {
            "username": self.username,
            "password": self.password.get_secret_value(),
            "serveraddress": self.server,
        }

    def header(self) -> str:
        """The base64url-encoded ``X-Registry-Auth`` header value."""
        return base64.urlsafe_b64encode(orjson.dumps(self.as_dict())).decode("ascii")


def split_ref(ref: str) -> tuple[str, str]:
    """Split ``registry/name:tag`` into name and tag (``latest`` when none).

    Args:
        ref: An image reference.
    """
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name:
        return ref, "latest"
    return name, tag
