"""The embedded NIM emulator: a NIM / vLLM-compatible HTTP server; a test double, not a model.

Run it in-process (``async with Emulator(...) as emu: emu.url``) or as a command
(``nim-async emulate`` / ``python -m nim_async.emulator``). It is a leaf: it imports nothing of
the client but :mod:`nim_async.catalog` and :mod:`nim_async.errors`, and has its own resize,
box and schema code (:mod:`~nim_async.emulator.geometry`, :mod:`~nim_async.emulator.guided`).

By default it follows vLLM 0.32 (measured against the real server by
``tests/vllm/test_differential.py``):

* top-level ``guided_*`` fields: HTTP 200, ignored (output unconstrained), one warning line;
* ``structured_outputs`` (``choice`` / ``regex`` / ``json`` / ``grammar``) and
  ``response_format`` ``json_schema`` / ``json_object``: enforced; the two together, or two
  kinds inside ``structured_outputs``: 400 with vLLM's message;
* ``nvext`` and unknown fields: ignored with a log line;
* endpoints ``/health``, ``/version`` (``{"version": "0.32.0"}``), ``/metrics`` besides NIM's;
  metric names and labels as vLLM 0.32's; errors as ``{"error": {message, type, param, code}}``;
* timing: preprocessing (body, image fetch, scene analysis) adds to the time to first token,
  then tokens follow at the ITL without a catch-up burst; the metrics report what was sent.

``legacy_guided`` (``--legacy-guided``) selects the older behaviour: top-level ``guided_*``
enforced and ``nvext`` read, as NIM 1.x / vLLM < 0.12 did (``/version`` then says 0.11.0).

Differences from vLLM 0.32 that remain (deliberate, or beyond a test double):

* The text is the emulator's deterministic answer from solid-colour regions, never a model's;
  prompt tokens are counted by its own word-piece split, so they differ from a real
  tokenizer's (image tokens do follow Qwen2.5-VL's rule: one per 28×28 cell, plus 2 markers).
* NIM's endpoints (``/v1/health/live``, ``/v1/health/ready``, ``/v1/version``,
  ``/v1/metadata``, ``/v1/metrics``) are served too (vLLM: 404); ``/v1/version`` also names
  the emulated vLLM release; ``/health`` answers 503 during ``startup_seconds`` (a real vLLM
  does not listen until ready); ``owned_by`` is ``nim-async-emulator``, ``permission`` is
  ``[]``.
* ``structured_outputs`` that is not an object gets 400 (vLLM: 500, then a reset
  connection); regexes with lookaround or back-references get 400; grammars outside a small
  EBNF subset and ``structural_tag`` are accepted but not enforced; ``n`` > 1 gets 400.
* Validation messages other than the structured-output and unknown-model ones are the
  emulator's wording (same status and keys); vLLM's schema-level errors (body not JSON, a
  required field missing) have ``type`` ``"Bad Request"`` and a ``param`` like
  ``body.messages``, the emulator's ``BadRequestError``. Unknown fields are logged at WARNING
  (vLLM: DEBUG).
* Responses carry the fields the client reads, not vLLM's ``token_ids``, ``prompt_token_ids``,
  ``system_fingerprint``, ``refusal`` and other always-null extras; the message has both
  ``reasoning`` (vLLM 0.32's name) and ``reasoning_content``.
* Metrics: the subset of vLLM's names the client and benchmarks read, without ``_created``
  samples; the emulator's own error counter is ``nim_emulator:request_error_total``.
* An image with an aspect ratio over 200 is refused with 400, as the Qwen2.5-VL processor
  refuses it.
"""

from __future__ import annotations

from nim_async.emulator.server import OWNED_BY, Emulator, EmulatorStartupError
from nim_async.emulator.settings import DIALECTS, Dialect, EmulatorSettings

__all__ = [
    "DIALECTS",
    "OWNED_BY",
    "Dialect",
    "Emulator",
    "EmulatorSettings",
    "EmulatorStartupError",
]
