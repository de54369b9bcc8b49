"""The embedded NIM emulator: a NIM / vLLM-compatible HTTP server; a test double, not a model.

Run it in-process (``async with Emulator(...) as emu: emu.url``) or as a command
(``nim-async emulate`` / ``python -m nim_async.emulator``). It is a leaf: it imports nothing of
the client but :mod:`nim_async.catalog` and :mod:`nim_async.errors`, and has its own resize,
box and schema code (:mod:`~nim_async.emulator.geometry`, :mod:`~nim_async.emulator.guided`).

By default it follows vLLM 0.32 (measured against the real server by
``tests/vllm/test_differential.py`` and, per request form, ``scripts/wire_matrix.py``):

* top-level ``guided_*`` fields: HTTP 200, ignored (output unconstrained), one warning line;
* ``structured_outputs`` (``choice`` / ``regex`` / ``json`` / ``grammar``) and
  ``response_format`` ``json_schema`` / ``json_object``: enforced; the two together, or two
  kinds inside ``structured_outputs``: 400 with vLLM's message;
* ``nvext`` and unknown fields: ignored with a log line;
* endpoints ``/health``, ``/version`` (``{"version": "0.32.0"}``), ``/metrics`` besides NIM's;
  metric names and labels as vLLM 0.32's; errors as ``{"error": {message, type, param, code}}``;
* timing: preprocessing (body, image fetch, scene analysis) adds to the time to first token,
  then tokens follow at the ITL without a catch-up burst; the metrics report what was sent.
* ``media_io_kwargs`` / ``mm_processor_kwargs`` typed as vLLM 0.32 types them
  (``dict[str, dict]`` keyed by modality, ``dict``; ``null`` allowed): a flat
  ``media_io_kwargs`` ``{"fps": 2.0}`` is 400 naming ``media_io_kwargs.fps``;
* ``video_url`` content parts (``data:video/...;base64,...`` or an http(s) URL of MP4 / MOV /
  WebM) counted toward the context by the rule in :mod:`~nim_async.emulator.video`.

Tasks, told apart by what the request carries: a JSON schema's top-level key
(``phrase_grounding`` / ``vqa`` / ``freeform``), else the key the prompt asks for
(``phrase_grounding``, ``"vqa"``, ``"freeform"``), else grounding words; ``freeform`` gets
``{"freeform": {"caption": ...}}`` (a description of the scene with positions by thirds, or for a
video what its container header says); a request with no system text whose last line is not a
question gets plain text (vi-sdk's ``generic``); anything else VQA JSON. Image tokens follow the
served model's vision family: Qwen2.5-VL (28-pixel cells, budget 1,003,520) by default, Qwen3-VL
(32-pixel cells, 65,536..16,777,216 pixels) for ``cosmos-reason2-*`` / Qwen3-VL names
(:mod:`~nim_async.emulator.geometry`; ``--vision`` / ``--max-pixels`` override). Boxes for
cosmos-reason2 are 0-1000 of the image (``norm1000``): without a ``box_format`` the served name
picks the catalog's convention, in-process as on the command line.

``legacy_guided`` (``--legacy-guided``) selects the older behaviour: top-level ``guided_*``
enforced and ``nvext`` read, as NIM 1.x / vLLM < 0.12 did (``/version`` then says 0.11.0).

Differences from vLLM 0.32 that remain (deliberate, or beyond a test double):

* The text is the emulator's deterministic answer from solid-colour regions, never a model's;
  prompt tokens are counted by its own word-piece split, so they differ from a real
  tokenizer's (image tokens do follow the processor's rule: one per 28×28 cell for Qwen2.5-VL,
  per 32×32 cell for Qwen3-VL, plus 2 markers).
* Videos are not decoded: their tokens come from the container header by the emulator's own
  rule (:mod:`~nim_async.emulator.video`: fps from ``media_io_kwargs.video.fps`` or
  ``mm_processor_kwargs.fps``, default 2; 4..768 frames, merged in pairs; at most 256 cells a
  frame; a header without size / duration counts 640×480 for 2 s), not vLLM's frame sampler;
  the caption of a video describes its header, not its frames. Files that are not MP4 / MOV /
  WebM are refused with 400.
* ``media_io_kwargs`` / ``mm_processor_kwargs`` are accepted as if the server had been
  started with ``--trust-request-mm-kwargs`` (vLLM 0.32 without it: 400 "Per-request
  media_io_kwargs are disabled by default ... (parameter=media_io_kwargs)" for any non-empty
  dict); of their contents only a video ``fps`` is read (it must be a positive number, the
  emulator's check), the rest is accepted and not applied. Their schema errors use the
  emulator's ``BadRequestError`` and ``param`` ``media_io_kwargs.fps`` (vLLM: ``Bad Request``,
  ``body.media_io_kwargs.fps``).
* No per-prompt media limit (vLLM: ``--limit-mm-per-prompt``; the tier's ``{"image": 4,
  "video": 1}`` answers a second video with 400 "At most 1 video(s) may be provided in one
  prompt").
* ``logprobs`` / ``top_logprobs`` / ``prompt_logprobs`` are accepted and answered ``null``
  (vLLM returns them); ``mm_processor_kwargs`` ``max_pixels`` / ``min_pixels`` do not change
  the image tokens (vLLM's processor resizes: 104 -> 56 prompt tokens for a 224x224 PNG at
  ``max_pixels`` 12544); ``top_k``, ``repetition_penalty``, ``min_p`` and the other sampling
  fields are read but the text is deterministic (``ignore_eos`` and ``min_tokens`` do set the
  length). Measured per request form by ``scripts/wire_matrix.py``.
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
from nim_async.emulator.settings import FIELD_SOURCES, EmulatorSettings, FieldSource

__all__ = [
    "FIELD_SOURCES",
    "OWNED_BY",
    "Emulator",
    "EmulatorSettings",
    "EmulatorStartupError",
    "FieldSource",
]
