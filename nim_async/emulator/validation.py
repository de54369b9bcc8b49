"""Request validation of the emulator: a chat body becomes a :class:`ChatRequest` or a 4xx error.

Field handling follows vLLM 0.32 (unknown fields ignored with a log line, ``nvext`` ignored,
top-level ``guided_*`` ignored with a warning) unless the settings ask for the legacy NIM 1.x
behaviour. No IO.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson

from nim_async.emulator.constraints import GUIDED_FIELDS, Constraint, find_constraint
from nim_async.emulator.rejection import RequestError, bad
from nim_async.emulator.settings import EmulatorSettings
from nim_async.emulator.tokens import count_tokens

__all__ = [
    "ChatRequest",
    "FieldLog",
    "RequestError",
    "bad",
    "check_context",
    "parse_request",
    "read_messages",
]

log = logging.getLogger("nim_async.emulator")

OPENAI_CHAT_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
        "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "metadata", "store",
        "modalities", "reasoning_effort", "service_tier",
    }
)  # fmt: skip
"""Every top-level field of the OpenAI chat API (``nvext`` is NIM's). Not the client's
``protocol.wire.OPENAI_FIELDS``, the sampling fields it sends: the emulator accepts more."""

VLLM_CHAT_FIELDS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
        "structured_outputs", "skip_special_tokens", "spaces_between_special_tokens",
        "include_stop_str_in_output", "stop_token_ids", "length_penalty", "use_beam_search",
        "best_of", "echo", "add_generation_prompt", "continue_final_message", "chat_template",
        "chat_template_kwargs", "mm_processor_kwargs", "media_io_kwargs", "documents",
        "priority", "request_id", "prompt_logprobs", "return_tokens_as_token_ids",
        "truncate_prompt_tokens", "bad_words", "allowed_token_ids", "logits_processors",
        "add_special_tokens", "cache_salt", "vllm_xargs",
    }
)  # fmt: skip
"""Every extension field of vLLM's chat request (top level on vLLM and NIM 2.x, under ``nvext``
on NIM 1.x); the client sends only a few of them."""

_LEGACY_GUIDED = frozenset({*GUIDED_FIELDS, "guided_decoding_backend", "guided_whitespace_pattern"})
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


class FieldLog:
    """Logs ignored request fields once per distinct set (as vLLM's ``warning_once``)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, frozenset[str]]] = set()

    def ignored(self, names: set[str], where: str = "", *, level: int = logging.WARNING) -> None:
        """Log that ``names`` were present but ignored (once per distinct set)."""
        key = (where, frozenset(names))
        if key in self._seen:
            return
        if len(self._seen) < 256:
            self._seen.add(key)
        log.log(
            level,
            "emulator: the following fields were present in the request %sbut ignored: %s",
            where,
            sorted(names),
        )

    def removed_guided(self, names: set[str]) -> None:
        """Log vLLM 0.32's warning for top-level ``guided_*`` fields (once per distinct set)."""
        key = ("guided", frozenset(names))
        if key in self._seen:
            return
        self._seen.add(key)
        log.warning(
            "emulator: Request contains the removed guided-decoding field(s) %s, which are "
            "ignored; output will NOT be constrained. Use `structured_outputs` (or "
            "`response_format`) instead (vLLM 0.32 behaviour; --legacy-guided enforces them).",
            sorted(names),
        )


@dataclass(slots=True)
class ChatRequest:
    """A validated chat-completion request (before its images are looked at).

    Attributes:
        stream: Stream as SSE.
        include_usage: Send a final usage chunk (``stream_options.include_usage``).
        continuous_usage: Usage on every chunk (``stream_options.continuous_usage_stats``).
        temperature: Sampling temperature.
        seed: Sampling seed.
        max_tokens: Output limit, if given.
        max_param: The name it was given under.
        min_tokens: Minimum output tokens.
        ignore_eos: Generate until the limit.
        stops: Stop strings.
        include_stop: Keep the stop string in the output.
        system_texts: Texts of system / developer messages.
        user_texts: One text per user message.
        image_urls: Image URLs in order.
        text_tokens: Prompt tokens of the text (images are counted later).
        constraint: The one structured-output constraint, if any.
        video_urls: Video URLs in order (``video_url`` parts).
        media_io_kwargs: Per-modality media loading options (``{"video": {"fps": 2}}``).
        mm_processor_kwargs: Options for the multimodal processor.
    """

    stream: bool
    include_usage: bool
    continuous_usage: bool
    temperature: float
    seed: int | None
    max_tokens: int | None
    max_param: str
    min_tokens: int
    ignore_eos: bool
    stops: list[str]
    include_stop: bool
    system_texts: list[str]
    user_texts: list[str]
    image_urls: list[str]
    text_tokens: int
    constraint: Constraint | None
    video_urls: list[str]
    media_io_kwargs: dict[str, dict[str, Any]] | None
    mm_processor_kwargs: dict[str, Any] | None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_request(raw: bytes, settings: EmulatorSettings, fields: FieldLog) -> ChatRequest:
    """Validate a chat-completion body.

    Args:
        raw: The request body.
        settings: The emulator's settings (model name, sampling_fields, guided handling).
        fields: Where ignored fields are logged.

    Raises:
        RequestError: 400 for a malformed request, 404 for an unknown model.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != settings.served_model_name:
        if not isinstance(model, str):
            raise bad("model must be a string", "model")
        raise RequestError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {settings.served_model_name}.",
            param="model",
        )
    p = merge_fields(body, settings, fields)
    videos: list[str] = []
    system_texts, user_texts, images, tokens = read_messages(body.get("messages"), videos)
    media_io, mm_kwargs = _media_kwargs(p)
    stream, include_usage, continuous = _stream_options(p)
    max_tokens, max_param, min_tokens = _limits(p)
    temperature, seed = _sampling_values(p)
    ignore_eos = p.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad("ignore_eos must be a boolean", "ignore_eos")
    return ChatRequest(
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        temperature=temperature,
        seed=seed,
        max_tokens=max_tokens,
        max_param=max_param,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        stops=_stops(p.get("stop")),
        include_stop=bool(p.get("include_stop_str_in_output", False)),
        system_texts=system_texts,
        user_texts=user_texts,
        image_urls=images,
        text_tokens=tokens,
        constraint=find_constraint(p),
        video_urls=videos,
        media_io_kwargs=media_io,
        mm_processor_kwargs=mm_kwargs,
    )


def _media_kwargs(
    p: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]] | None, dict[str, Any] | None]:
    """Validate ``media_io_kwargs`` / ``mm_processor_kwargs`` with vLLM 0.32's schema.

    vLLM types them ``dict[str, dict[str, Any]]`` (keyed by modality) and ``dict[str, Any]``;
    ``null`` is allowed. A flat ``{"fps": 2.0}`` is refused there as
    ``body.media_io_kwargs.fps: Input should be a valid dictionary``. A video ``fps`` that is
    given must be a positive number (the emulator's check).
    """
    media_io = p.get("media_io_kwargs")
    if media_io is not None:
        if not isinstance(media_io, dict):
            raise bad("media_io_kwargs: Input should be a valid dictionary", "media_io_kwargs")
        for modality, options in media_io.items():
            if not isinstance(options, dict):
                raise bad(
                    f"media_io_kwargs.{modality}: Input should be a valid dictionary (options "
                    'are keyed by modality, e.g. {"video": {"fps": 2}})',
                    f"media_io_kwargs.{modality}",
                )
    mm_kwargs = p.get("mm_processor_kwargs")
    if mm_kwargs is not None and not isinstance(mm_kwargs, dict):
        raise bad("mm_processor_kwargs: Input should be a valid dictionary", "mm_processor_kwargs")
    for where, source in (
        ("media_io_kwargs.video.fps", (media_io or {}).get("video") or {}),
        ("mm_processor_kwargs.fps", mm_kwargs or {}),
    ):
        fps = source.get("fps")
        if fps is not None and (not _is_num(fps) or fps <= 0):
            raise bad(f"{where} must be a positive number, got {fps!r}", where)
    return media_io, mm_kwargs


def merge_fields(
    body: dict[str, Any], settings: EmulatorSettings, fields: FieldLog
) -> dict[str, Any]:
    """Return the fields the emulator reads, per sampling_fields and the guided-field handling.

    Args:
        body: The request object.
        settings: ``sampling_fields``, ``legacy_guided`` and ``ignore_guided``.
        fields: Where ignored fields are logged.

    Raises:
        RequestError: when ``nvext`` is read and is not an object.
    """
    sampling_fields = settings.effective_sampling_fields
    known = OPENAI_CHAT_FIELDS | VLLM_CHAT_FIELDS | _LEGACY_GUIDED | {"nvext"}
    unknown = {k for k in body if k not in known}
    if unknown:
        fields.ignored(unknown)
    params = {k: v for k, v in body.items() if k in known and k != "nvext"}
    top_guided = {k for k in params if k in _LEGACY_GUIDED}
    if top_guided and settings.ignore_guided:
        log.debug("emulator: ignoring %s (--ignore-guided)", sorted(top_guided))
    elif top_guided and not settings.legacy_guided:
        fields.removed_guided(top_guided)
    if top_guided and (settings.ignore_guided or not settings.legacy_guided):
        params = {k: v for k, v in params.items() if k not in top_guided}
    nvext = body.get("nvext")
    if sampling_fields == "openai":
        if nvext is not None:
            shown = set(nvext) if isinstance(nvext, dict) else {"nvext"}
            fields.ignored({f"nvext.{k}" for k in shown}, "(nvext is NIM 1.x's) ")
        return params
    if nvext is not None and not isinstance(nvext, dict):
        raise bad("nvext must be an object", "nvext")
    if sampling_fields == "nvext":
        top_ext = {k for k in params if k in VLLM_CHAT_FIELDS or k in _LEGACY_GUIDED}
        if top_ext:
            fields.ignored(top_ext, "(sampling_fields nvext, use nvext) ")
            params = {k: v for k, v in params.items() if k not in top_ext}
    if nvext:
        allowed = OPENAI_CHAT_FIELDS | VLLM_CHAT_FIELDS | _LEGACY_GUIDED
        odd = {k for k in nvext if k not in allowed}
        if settings.ignore_guided:
            odd |= {k for k in nvext if k in _LEGACY_GUIDED}
        if odd:
            fields.ignored({f"nvext.{k}" for k in odd})
        params.update({k: v for k, v in nvext.items() if k not in odd})
    return params


def _stream_options(p: dict[str, Any]) -> tuple[bool, bool, bool]:
    stream = p.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream must be a boolean", "stream")
    opts = p.get("stream_options")
    if opts is None:
        return stream, False, False
    if not stream:
        raise bad("Stream options can only be defined when `stream=True`.", "stream_options")
    if not isinstance(opts, dict):
        raise bad("stream_options must be an object", "stream_options")
    return (
        stream,
        bool(opts.get("include_usage", False)),
        bool(opts.get("continuous_usage_stats", False)),
    )


def _limits(p: dict[str, Any]) -> tuple[int | None, str, int]:
    max_tokens = p.get("max_completion_tokens")
    max_param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens = p.get("max_tokens")
        max_param = "max_tokens"
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise bad(f"{max_param} must be at least 1, got {max_tokens!r}.", max_param)
    min_tokens = p.get("min_tokens", 0)
    if min_tokens is None:
        min_tokens = 0
    if not _is_int(min_tokens) or min_tokens < 0:
        raise bad(f"min_tokens must be greater than or equal to 0, got {min_tokens!r}.")
    if max_tokens is not None and min_tokens > max_tokens:
        raise bad(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
            "min_tokens",
        )
    return max_tokens, max_param, min_tokens


def _sampling_values(p: dict[str, Any]) -> tuple[float, int | None]:
    temperature = _number(p, "temperature", 1.0, lo=0.0)
    _number(p, "top_p", 1.0, lo=0.0, lo_open=True, hi=1.0)
    _number(p, "min_p", 0.0, lo=0.0, hi=1.0)
    _number(p, "presence_penalty", 0.0, lo=-2.0, hi=2.0)
    _number(p, "frequency_penalty", 0.0, lo=-2.0, hi=2.0)
    _number(p, "repetition_penalty", 1.0, lo=0.0, lo_open=True)
    top_k = p.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < -1):
        raise bad(f"top_k must be -1 (disable), 0 or at least 1, got {top_k!r}.", "top_k")
    n_choices = p.get("n", 1)
    if n_choices is not None and (not _is_int(n_choices) or n_choices < 1):
        raise bad(f"n must be at least 1, got {n_choices!r}.", "n")
    if n_choices not in (None, 1):
        raise bad("the emulator generates one choice per request (n must be 1)", "n")
    seed = p.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad("seed must be an integer", "seed")
    logprobs = p.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise bad("logprobs must be a boolean", "logprobs")
    top_logprobs = p.get("top_logprobs")
    if top_logprobs is not None and (not _is_int(top_logprobs) or not 0 <= top_logprobs <= 20):
        raise bad("top_logprobs must be between 0 and 20", "top_logprobs")
    return temperature, seed


def _number(
    p: dict[str, Any],
    name: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    value = p.get(name)
    if value is None:
        return default
    if not _is_num(value):
        raise bad(f"{name} must be a number, got {value!r}", name)
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        bound = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise bad(f"{name} must be {bound}, got {v}.", name)
    if hi is not None and v > hi:
        raise bad(f"{name} must be at most {hi}, got {v}.", name)
    return v


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    raise bad("stop must be a string or a list of strings", "stop")


def _content_texts(
    i: int, content: list[Any], images: list[str], videos: list[str] | None = None
) -> list[str]:
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise bad(f"messages[{i}].content[{j}] must be an object", "messages")
        kind = part.get("type")
        if kind in ("text", "input_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise bad(f"messages[{i}].content[{j}].text must be a string", "messages")
            texts.append(text)
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url:
                raise bad(f"messages[{i}].content[{j}].image_url.url must be a string", "messages")
            images.append(url)
        elif kind == "video_url" and videos is not None:
            vu = part.get("video_url")
            url = vu.get("url") if isinstance(vu, dict) else vu
            if not isinstance(url, str) or not url:
                raise bad(f"messages[{i}].content[{j}].video_url.url must be a string", "messages")
            videos.append(url)
        else:
            raise bad(
                f"messages[{i}].content[{j}].type {kind!r} is not supported "
                "(use 'text', 'image_url' or 'video_url')",
                "messages",
            )
    return texts


def read_messages(
    messages: object, videos: list[str] | None = None
) -> tuple[list[str], list[str], list[str], int]:
    """Validate ``messages``; return system texts, user texts, image URLs and text tokens.

    Args:
        messages: The request's ``messages``.
        videos: Where ``video_url`` URLs are collected; ``None`` refuses video parts.

    Raises:
        RequestError: 400 naming the first malformed message.
    """
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of message objects", "messages")
    system_texts: list[str] = []
    user_texts: list[str] = []
    images: list[str] = []
    tokens = 3  # assistant turn header
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad(f"messages[{i}] must be an object", "messages")
        role = msg.get("role")
        if role not in _ROLES:
            raise bad(
                f"messages[{i}].role must be one of system, user, assistant, tool, developer; "
                f"got {role!r}",
                "messages",
            )
        tokens += 4
        content = msg.get("content")
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            texts = _content_texts(i, content, images, videos)
        elif content is None and role == "assistant":
            texts = []
        elif content is None:
            raise bad(f"messages[{i}].content is required for role {role!r}", "messages")
        else:
            raise bad(
                f"messages[{i}].content must be a string or a list of content parts", "messages"
            )
        tokens += sum(count_tokens(text) for text in texts)
        if role in ("system", "developer"):
            system_texts.extend(texts)
        elif role == "user":
            user_texts.append("\n".join(texts))
    return system_texts, user_texts, images, tokens


def check_context(req: ChatRequest, prompt_tokens: int, max_model_len: int) -> int:
    """Check the prompt and the output limit fit the context; return the output limit.

    Raises:
        RequestError: 400 with vLLM's wording when they do not fit.
    """
    if prompt_tokens >= max_model_len:
        raise bad(
            f"This model's maximum context length is {max_model_len} tokens. However, "
            f"your request has {prompt_tokens} input tokens. Please reduce the length of "
            "the input messages.",
            "messages",
        )
    room = max_model_len - prompt_tokens
    if req.max_tokens is not None and req.max_tokens > room:
        raise bad(
            f"'{req.max_param}' is too large: {req.max_tokens}. This model's maximum context "
            f"length is {max_model_len} tokens and your request has {prompt_tokens} input "
            f"tokens ({req.max_tokens} > {max_model_len} - {prompt_tokens}).",
            req.max_param,
        )
    return req.max_tokens if req.max_tokens is not None else room
