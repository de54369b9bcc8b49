"""What the emulator's request handlers share: settings, metrics, images, readiness. No IO."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from nim_async.emulator.images import ImageLoader
from nim_async.emulator.metrics import Metrics
from nim_async.emulator.settings import EmulatorSettings
from nim_async.emulator.validation import FieldLog

__all__ = ["ServerState"]


@dataclass(slots=True)
class ServerState:
    """State of one running emulator, shared by its routes.

    Attributes:
        settings: The settings in effect.
        metrics: Live counters.
        images: Image loader and scene cache.
        fields: Log of ignored request fields.
        rng: The emulator's own randomness (fault injection).
        created: Unix time the emulator was made (``/v1/models`` ``created``).
        ready_at: Loop time from which the server is ready.
        slots: Limits sequences generated at once (None = no limit).
        model_config: ``config.json`` of custom weights, if any.
    """

    settings: EmulatorSettings
    metrics: Metrics = field(default_factory=Metrics)
    images: ImageLoader = field(default_factory=ImageLoader)
    fields: FieldLog = field(default_factory=FieldLog)
    rng: random.Random = field(default_factory=random.Random)
    created: int = 0
    ready_at: float = 0.0
    slots: asyncio.Semaphore | None = None
    model_config: dict[str, Any] | None = None

    @property
    def model_json(self) -> bytes:
        """The served model name, JSON-encoded (for pre-built chunks)."""
        return orjson.dumps(self.settings.served_model_name)

    def is_ready(self) -> bool:
        """Whether the start-up delay has passed."""
        return asyncio.get_running_loop().time() >= self.ready_at
