"""Helpers for reading model output: reasoning blocks and the final JSON object. No IO."""

from __future__ import annotations

import json
import re
from typing import Any

from nim_async.errors import PredictionParseError

__all__ = ["find_final_json_object", "keyed_json_body", "no_json_error", "split_thinking"]

_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_DECODER = json.JSONDecoder()


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split ``<think>…</think>`` reasoning from the answer.

    Args:
        text: The model's full output.

    Returns:
        ``(thinking, answer)``: the reasoning text (``None`` when there is no block) and the
        rest of the output with every reasoning block removed. An unclosed ``<think>`` takes
        the rest of the text as reasoning. A stray ``</think>`` with no opening tag (servers
        whose chat template opens the block in the prompt) ends the reasoning there.
    """
    blocks = [m.group(1).strip() for m in _THINK_RE.finditer(text)]
    if blocks:
        answer = _THINK_RE.sub("", text)
        return "\n\n".join(b for b in blocks if b) or None, answer.strip()
    head, sep, tail = text.partition("</think>")
    if sep:
        return head.strip() or None, tail.strip()
    return None, text.strip()


def find_final_json_object(text: str) -> dict[str, Any]:
    """Return the last complete top-level JSON object in ``text``.

    The object may stand alone, sit inside a Markdown code fence, or follow prose.

    Args:
        text: The answer part of a model output.

    Returns:
        The decoded object.

    Raises:
        PredictionParseError: if no JSON object is found.
    """
    found: dict[str, Any] | None = None
    pos = text.find("{")
    while pos != -1:
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            found = value
        pos = text.find("{", end)
    if found is None:
        raise PredictionParseError(
            "the model output contains no complete JSON object", raw_output=text
        )
    return found


def no_json_error(text: str, finish_reason: str | None, task: str) -> PredictionParseError:
    """Build the error for an output without a usable JSON object.

    Args:
        text: The full model output.
        finish_reason: Why generation ended; ``"length"`` means the output was cut off.
        task: Task name for the message.
    """
    if finish_reason == "length":
        return PredictionParseError(
            f"the {task} output was cut off at max_tokens before its JSON was complete; "
            "raise NIMSamplingParams.max_tokens",
            raw_output=text,
        )
    return PredictionParseError(
        f"the {task} output contains no complete JSON object", raw_output=text
    )


def keyed_json_body(text: str, answer: str, finish_reason: str | None, task: str, key: str) -> Any:
    """The body of a task's answer: ``obj[key]`` of the final JSON object, or the object itself.

    Args:
        text: The full model output (for the error).
        answer: The output after its reasoning (:func:`split_thinking`).
        finish_reason: Why generation ended (a cut-off output gets its own message).
        task: Task name for the message.
        key: The task's top-level key (``"vqa"``); a bare object without it is accepted.

    Raises:
        PredictionParseError: as :func:`no_json_error` when ``answer`` has no JSON object.
    """
    try:
        obj = find_final_json_object(answer)
    except PredictionParseError:
        raise no_json_error(text, finish_reason, task) from None
    return obj.get(key, obj)
