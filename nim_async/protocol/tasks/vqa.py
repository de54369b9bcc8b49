"""Visual question answering: ``{"vqa": {"answer": ...}}``."""

from __future__ import annotations

from typing import Any, ClassVar

from nim_async.errors import PredictionParseError
from nim_async.protocol.tasks.base import ParseContext, Task, keyed_object_schema
from nim_async.protocol.tasks.parsing import keyed_json_body, split_thinking
from nim_async.results import VQAResponse

__all__ = ["VQATask"]


class VQATask(Task):
    """Answer a question about the image in a short text."""

    name: ClassVar[str] = "vqa"
    key: ClassVar[str] = "vqa"
    default_prompt: ClassVar[str] = "Describe what is shown in this image in one sentence."
    system_prompt: ClassVar[str | None] = (
        "You answer questions about an image. Look at the image, answer the question briefly "
        'and exactly, and reply with JSON only, in the form {"vqa": {"answer": "<answer>"}}.'
    )

    def output_schema(self) -> dict[str, Any]:
        """Return the JSON schema ``{"vqa": {"answer": string}}``."""
        return keyed_object_schema(self.key, {"answer": {"type": "string"}}, ["answer"])

    def parse(self, text: str, context: ParseContext) -> VQAResponse:
        """Parse ``{"vqa": {"answer": ...}}`` from the output.

        Raises:
            PredictionParseError: when the answer is missing or not text.
        """
        thinking, answer_text = split_thinking(text)
        body = keyed_json_body(text, answer_text, context.finish_reason, "VQA", "vqa")
        answer = body.get("answer") if isinstance(body, dict) else None
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise PredictionParseError(
                'the VQA output has no {"vqa": {"answer": <text>}}', raw_output=text
            )
        return VQAResponse(
            **context.response_fields(text, thinking),
            answer=answer,
        )
