"""Generic: the model's answer as text, with no output format asked for or parsed."""

from __future__ import annotations

from typing import Any, ClassVar

from nim_async.errors import PredictionParseError
from nim_async.protocol.tasks.base import ParseContext, Task
from nim_async.protocol.tasks.parsing import split_thinking
from nim_async.results import GenericResponse

__all__ = ["GenericTask"]


class GenericTask(Task):
    """Send the prompt with the image and return what the model writes, unparsed.

    There is no system prompt (the model's own chat template applies). The response's
    ``result`` is the answer text without any ``<think>`` block; ``raw_output`` keeps it. A
    video sent with this task is sent with ``video-freeform`` (its response is a
    ``FreeformResponse``), as vi-sdk does.
    """

    name: ClassVar[str] = "generic"
    key: ClassVar[str] = "generic"
    video_task: ClassVar[str | None] = "video-freeform"
    default_prompt: ClassVar[str] = "Describe this image."
    system_prompt: ClassVar[str | None] = None

    def output_schema(self) -> dict[str, Any]:
        """Return ``{"type": "string"}``: the task asks for no structure."""
        return {"type": "string"}

    def parse(self, text: str, context: ParseContext) -> GenericResponse:
        """Wrap the output as a :class:`~nim_async.results.GenericResponse`.

        Raises:
            PredictionParseError: if the model produced no answer text at all.
        """
        thinking, answer = split_thinking(text)
        if not answer and not thinking:
            raise PredictionParseError("the model produced no text", raw_output=text)
        return GenericResponse(
            **context.response_fields(text, thinking),
            text=answer,
        )
