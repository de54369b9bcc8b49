"""Free-form answers: ``{"freeform": {"caption": ...}}`` (vi-sdk's default task)."""

from __future__ import annotations

from typing import Any, ClassVar

from nim_async.errors import PredictionParseError
from nim_async.protocol.tasks.base import ParseContext, Task, keyed_object_schema
from nim_async.protocol.tasks.parsing import keyed_json_body, no_json_error, split_thinking
from nim_async.results import FreeformResponse

__all__ = ["FreeformTask", "parse_caption"]


class FreeformTask(Task):
    """Answer any request about the image in free text, wrapped as ``{"freeform": ...}``.

    The parser takes ``{"freeform": {"caption": ...}}`` (or a bare ``{"caption": ...}``). A
    model that ignores the format and answers in prose, with no JSON object at all, gets that
    prose as its caption; a JSON object of another shape, or JSON cut off mid-way, is a parse
    error. A video sent with this task is sent with ``video-freeform`` (its prompts, the same
    output), as vi-sdk does.
    """

    name: ClassVar[str] = "freeform"
    key: ClassVar[str] = "freeform"
    video_task: ClassVar[str | None] = "video-freeform"
    default_prompt: ClassVar[str] = "Describe this image in detail: what it shows and where."
    system_prompt: ClassVar[str | None] = (
        "You are an assistant who looks at an image and does what the user asks about it, "
        "saying only what the image shows. Put your whole answer in one JSON object and "
        'nothing after it: {"freeform": {"caption": "<your answer>"}}.'
    )

    def output_schema(self) -> dict[str, Any]:
        """Return the JSON schema ``{"freeform": {"caption": string}}``."""
        return keyed_object_schema(
            self.key, {"caption": {"type": "string", "minLength": 1}}, ["caption"]
        )

    def parse(self, text: str, context: ParseContext) -> FreeformResponse:
        """Parse the caption from the output.

        Raises:
            PredictionParseError: for a JSON object without a text caption, JSON that was cut
                off, or an empty output.
        """
        thinking, caption = parse_caption(text, context, self.name)
        return FreeformResponse(
            task_type=self.name,
            **context.response_fields(text, thinking),
            caption=caption,
        )


def parse_caption(text: str, context: ParseContext, task: str) -> tuple[str | None, str]:
    """Return ``(thinking, caption)`` from a free-form output.

    Args:
        text: The model's full output.
        context: The parse context (``finish_reason`` tells a cut-off output).
        task: Task name for error messages.

    Raises:
        PredictionParseError: as :meth:`FreeformTask.parse`.
    """
    thinking, answer = split_thinking(text)
    if "{" not in answer:
        if answer and context.finish_reason != "length":
            return thinking, answer
        raise no_json_error(text, context.finish_reason, task)
    body = keyed_json_body(text, answer, context.finish_reason, task, "freeform")
    caption = body.get("caption") if isinstance(body, dict) else None
    if not isinstance(caption, str):
        raise PredictionParseError(
            f'the {task} output has no {{"freeform": {{"caption": <text>}}}}', raw_output=text
        )
    return thinking, caption
