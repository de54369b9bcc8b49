"""One request's preparation, with no IO: the prepared call, the argument checks, the body.

:class:`PreparedCall` is what :meth:`AsyncNIMPredictor._prepare
<nim_async.predict.pipeline.PredictorPipeline._prepare>` hands to the send and the finish;
:func:`build_body_template` serialises the chat body around a placeholder once per (sampling
parameters, prompt, stream, model, task, media kind, wire format), so that each request only
splices its base64 media in as bytes; :func:`check_prompt` and :func:`check_params` check the
caller's arguments before anything is loaded.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import orjson

from nim_async.config import NIMSamplingParams
from nim_async.errors import InvalidParameterError
from nim_async.predict.media import EncodedImage
from nim_async.predict.video import EncodedVideo
from nim_async.protocol import wire
from nim_async.protocol.tasks import Task
from nim_async.protocol.wire import Constraint, WireFormat

__all__ = [
    "DEFAULT_PARAMS",
    "BodyTemplate",
    "PreparedCall",
    "build_body_template",
    "check_params",
    "check_prompt",
]

#: The sampling parameters of a call that passes none.
DEFAULT_PARAMS = NIMSamplingParams()


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """One prepared request (immutable; never shared between calls).

    Attributes:
        body: The serialised JSON body, media included (re-sent as is on retries).
        prompt: The user prompt sent (the task's default filled in).
        image: The encoded image or video.
        model_input_size: The size the model sees, for converting boxes (``None`` for a video).
        params: The sampling parameters.
        constraint: The guided-decoding constraint sent, if any.
        custom: A constraint other than the task's own schema: the text is returned as is.
        wire: Where the server takes each field.
        task: The predictor's task, or the one its media is sent with (freeform video:
            ``video-freeform``).
    """

    body: bytes
    prompt: str
    image: EncodedImage | EncodedVideo
    model_input_size: tuple[int, int] | None
    params: NIMSamplingParams
    constraint: Constraint | None
    custom: bool
    wire: WireFormat
    task: Task


BodyTemplate = tuple[
    "weakref.ref[NIMSamplingParams]", WireFormat, bytes, bytes, Constraint | None, bool
]
"""A serialised body around the image: (params, wire, head, tail, constraint, custom)."""


def build_body_template(
    params: NIMSamplingParams,
    prompt: str,
    stream: bool,
    wire_format: WireFormat,
    task: Task,
    kind: wire.MediaKind,
    *,
    model: str,
    system_prompt: str | None,
    default_task: Task,
    placeholder: str,
    placeholder_json: bytes,
) -> BodyTemplate:
    """Serialise the chat body once, split around where the media goes.

    Args:
        params: The sampling parameters (frozen; the template holds a weak reference).
        prompt: The user prompt.
        stream: Ask for a stream.
        wire_format: Where the server takes each field.
        task: The task the media is sent with.
        kind: ``"image"`` or ``"video"``.
        model: The served model name.
        system_prompt: The predictor's system prompt.
        default_task: The predictor's own task: when ``task`` differs and the system prompt is
            that task's default (not one the caller gave), ``task``'s own default is sent.
        placeholder: The string the media's data URI replaces.
        placeholder_json: ``placeholder`` serialised as JSON.

    Returns:
        ``(weakref(params), wire_format, head, tail, constraint, custom)``: the body is
        ``head + '"' + data_uri + '"' + tail``.
    """
    constraint = wire.constraint_of(params)
    custom = constraint is not None and not (
        constraint.kind == "json" and constraint.value == task.output_schema()
    )
    if task is not default_task and system_prompt == default_task.system_prompt:
        system_prompt = task.system_prompt  # the task's own default, not one you gave
    fields, extensions = wire.sampling_fields(params, kind)
    body = wire.chat_body(
        model=model,
        messages=wire.media_messages(system_prompt, prompt, placeholder, kind),
        stream=stream,
        wire=wire_format,
        fields=fields,
        extensions=extensions,
        constraint=constraint,
    )
    head, sep, tail = orjson.dumps(body).partition(placeholder_json)
    if not sep:  # pragma: no cover - image_messages always places the placeholder
        raise ValueError("image placeholder missing from the request body")
    return (weakref.ref(params), wire_format, head, tail, constraint, custom)


def check_prompt(prompt: object) -> None:
    """Check ``user_prompt``: a ``str`` or ``None``.

    Args:
        prompt: The caller's ``user_prompt``.

    Raises:
        InvalidParameterError: for anything else (bytes are not decoded for you: the encoding
            is yours to know).
    """
    if prompt is None or isinstance(prompt, str):
        return
    hint = (
        " (decode it first, e.g. prompt.decode('utf-8'))"
        if isinstance(prompt, bytes | bytearray)
        else ""
    )
    raise InvalidParameterError(
        f"user_prompt must be a str or None, not {type(prompt).__name__}{hint}",
        field="user_prompt",
    )


def check_params(params: object) -> NIMSamplingParams | None:
    """Return ``params`` when it is a ``NIMSamplingParams`` or ``None``.

    Args:
        params: The caller's ``sampling_params``.

    Raises:
        TypeError: for anything else.
    """
    if params is None or isinstance(params, NIMSamplingParams):
        return params
    raise TypeError(
        f"sampling_params must be a NIMSamplingParams or None, not {type(params).__name__}"
    )
