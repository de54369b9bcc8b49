"""Settings of the NIM emulator (a test double, not a model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from nim_async.catalog import BOX_FORMATS, BoxFormat, box_format_for_model
from nim_async.emulator.geometry import (
    VISION_FAMILIES,
    VisionFamily,
    vision_family_for,
    vision_rule,
)

__all__ = ["EMULATED_VLLM", "FIELD_SOURCES", "LEGACY_VLLM", "EmulatorSettings", "FieldSource"]

EMULATED_VLLM = "0.32.0"
"""The vLLM release whose API the emulator follows by default (``/version``)."""

LEGACY_VLLM = "0.11.0"
"""The vLLM release reported in legacy mode (``guided_*`` still honoured, as before 0.12)."""

FieldSource = Literal["both", "openai", "nvext"]
"""Where the emulator reads sampling fields.

* ``both``: top-level (NIM 2.x) and under ``nvext`` (NIM 1.x); ``nvext`` wins on conflict.
* ``openai``: top-level only; an ``nvext`` object is ignored with a log line (vLLM does this).
* ``nvext``: OpenAI fields top-level, vLLM extensions (``top_k``, ``guided_*`` ...) only under
  ``nvext``; top-level extensions are ignored with a log line.
"""

FIELD_SOURCES: tuple[FieldSource, ...] = ("both", "openai", "nvext")


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    """Behaviour of one emulator instance. Every field has a default.

    Attributes:
        served_model_name: Model id served at ``/v1/models`` and required in requests.
        max_model_len: Context length; longer prompts are rejected with 400.
        box_format: Coordinate convention of emitted boxes (``qwen25-abs``, ``norm1000``,
            ``norm1024``); ``None``: the catalog's for the served model name
            (:func:`~nim_async.catalog.box_format_for_model`: ``norm1000`` for cosmos-reason2,
            ``qwen25-abs`` for cosmos-reason1, ``norm1024`` for other names), as the command
            does. Read :attr:`box_convention` for the one in effect.
        startup_seconds: Seconds ``/v1/health/ready`` answers 503 after start.
        ttft_ms: Time to first token, in milliseconds.
        itl_ms: Inter-token latency, in milliseconds.
        max_num_seqs: Sequences generated at once; more requests wait in a queue (0 = no limit).
        prefill_ms_per_1k_tokens: Extra time to first token per 1000 prompt tokens.
        fail_rate: Probability that a chat request fails with ``fail_status``.
        fail_status: HTTP status of injected failures (503, 429 or 500).
        disconnect_after: Drop the connection after this many content chunks (None = never);
            a non-streaming response longer than this is dropped before it is sent.
        exit_after: Seconds after start at which the emulator stops serving (the process exits
            when run as a command); None = never.
        sampling_fields: Where sampling fields are read (see :data:`FieldSource`); ``None``
            follows the server profile: ``openai`` (vLLM 0.32: ``nvext`` ignored), or ``both`` with
            ``legacy_guided``. An explicit ``both`` / ``nvext`` honours ``nvext`` (guided
            fields inside it included) as NIM 1.x did.
        legacy_guided: Behave as vLLM < 0.12 / NIM 1.x: enforce top-level ``guided_*`` fields
            and (unless ``sampling_fields`` says otherwise) honour ``nvext``. Default off: top-level
            ``guided_*`` are ignored with a warning, as vLLM 0.32 does.
        ignore_guided: Ignore ``guided_*`` fields everywhere (top level and ``nvext``), even in
            legacy mode; ``structured_outputs`` and ``response_format`` stay honoured.
        reasoning: Prefix every answer with a ``<think>…</think>`` block.
        model_path: Directory of custom weights (``config.json`` required); reported as
            ``root`` in ``/v1/models``.
        max_pixels: Vision pixel budget used for image tokens and ``qwen25-abs`` boxes;
            ``None``: the vision family's default (1,003,520 for Qwen2.5-VL, 16,777,216 for
            Qwen3-VL).
        vision: The vision processor whose resize and token count the emulator follows;
            ``None``: from the served model name (``cosmos-reason2-*`` and Qwen3-VL names:
            ``qwen3-vl``; otherwise ``qwen2.5-vl``).
        seed: Seed of the emulator's own randomness (fault injection, unseeded sampling).
    """

    served_model_name: str = "cosmos-reason1-7b"
    max_model_len: int = 8192
    box_format: BoxFormat | None = None
    startup_seconds: float = 0.0
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    max_num_seqs: int = 0
    prefill_ms_per_1k_tokens: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    disconnect_after: int | None = None
    exit_after: float | None = None
    sampling_fields: FieldSource | None = None
    legacy_guided: bool = False
    ignore_guided: bool = False
    reasoning: bool = False
    model_path: str | None = None
    max_pixels: int | None = None
    seed: int | None = None
    vision: VisionFamily | None = None

    def __post_init__(self) -> None:
        """Check ranges.

        Raises:
            ValueError: naming the first field out of range.
        """
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        if self.max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        if self.box_format is not None and self.box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}")
        for name in ("startup_seconds", "ttft_ms", "itl_ms", "prefill_ms_per_1k_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_num_seqs < 0:
            raise ValueError("max_num_seqs must be >= 0 (0 = unlimited)")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.disconnect_after is not None and self.disconnect_after < 0:
            raise ValueError("disconnect_after must be >= 0")
        if self.exit_after is not None and self.exit_after < 0:
            raise ValueError("exit_after must be >= 0")
        if self.sampling_fields is not None and self.sampling_fields not in FIELD_SOURCES:
            raise ValueError(f"sampling_fields must be one of {', '.join(FIELD_SOURCES)}")
        if self.vision is not None and self.vision not in VISION_FAMILIES:
            raise ValueError(f"vision must be one of {', '.join(VISION_FAMILIES)}")
        if self.max_pixels is not None and self.max_pixels < 4 * 28 * 28:
            raise ValueError("max_pixels must be >= 3136")

    @property
    def box_convention(self) -> BoxFormat:
        """The box convention in effect: :attr:`box_format`, or the served model name's."""
        if self.box_format is not None:
            return self.box_format
        return box_format_for_model(self.served_model_name)

    @property
    def vision_family(self) -> VisionFamily:
        """The vision family in effect: :attr:`vision`, or the served model name's."""
        if self.vision is not None:
            return self.vision
        return vision_family_for(self.served_model_name)

    @property
    def pixel_budget(self) -> int:
        """The pixel budget in effect: :attr:`max_pixels`, or the vision family's default."""
        if self.max_pixels is not None:
            return self.max_pixels
        return vision_rule(self.vision_family).default_max_pixels

    @property
    def effective_sampling_fields(self) -> FieldSource:
        """Where sampling fields are read: :attr:`sampling_fields`, else the server profile's."""
        if self.sampling_fields is not None:
            return self.sampling_fields
        return "both" if self.legacy_guided else "openai"

    @property
    def vllm_version(self) -> str:
        """The vLLM release the emulator's API follows (reported at ``/version``)."""
        return LEGACY_VLLM if self.legacy_guided else EMULATED_VLLM

    def replace(self, **changes: Any) -> EmulatorSettings:
        """Return a copy with ``changes`` applied (and validated).

        Raises:
            TypeError: for a name that is not a setting.
            ValueError: for a value out of range.
        """
        return dataclasses.replace(self, **changes)
