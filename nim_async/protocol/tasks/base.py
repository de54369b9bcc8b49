"""The task interface: what a task type contributes (prompt, schema, parser). No IO."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from nim_async.catalog import BoxFormat
from nim_async.results import PredictionResponse, Usage

__all__ = ["ParseContext", "Task", "keyed_object_schema"]


@dataclass(frozen=True, slots=True)
class ParseContext:
    """Everything a parser needs besides the text.

    Attributes:
        prompt: The user prompt that was sent.
        model: The served model name.
        box_format: Box convention of the model.
        original_size: ``(width, height)`` of the original image.
        model_input_size: ``(width, height)`` of the image as the model saw it (for
            ``qwen25-abs``, after the 28-multiple resize of the image as sent).
        usage: Token accounting.
        finish_reason: Why generation ended.
    """

    prompt: str
    model: str = ""
    box_format: BoxFormat = "norm1024"
    original_size: tuple[int, int] | None = None
    model_input_size: tuple[int, int] | None = None
    usage: Usage | None = None
    finish_reason: str | None = None

    def response_fields(self, text: str, thinking: str | None) -> dict[str, Any]:
        """The fields every task's response takes from the request and the raw output.

        Args:
            text: The model's full output.
            thinking: The reasoning split off the output, if any.
        """
        return {
            "model": self.model,
            "prompt": self.prompt,
            "raw_output": text,
            "thinking": thinking,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "image_size": self.original_size,
        }


def keyed_object_schema(
    key: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """The JSON schema ``{key: {<properties>}}`` with ``key`` and ``required`` both required.

    Args:
        key: The task's top-level output key.
        properties: The JSON schemas of the object under ``key``.
        required: Which of ``properties`` must be present.
    """
    return {
        "type": "object",
        "properties": {key: {"type": "object", "properties": properties, "required": required}},
        "required": [key],
    }


class Task(ABC):
    """A task type: subclass it in one module and register it.

    Registration is :func:`nim_async.protocol.tasks.register_task`.

    Attributes:
        name: Task type name as users pass it (``"phrase-grounding"``).
        key: Top-level key of the output JSON (``"phrase_grounding"``).
        default_prompt: User prompt used when the caller gives none.
        system_prompt: System prompt sent before the user turn, or ``None``.
        media: What the task is asked about: ``"image"`` or ``"video"``.
        accepts: The media kinds a request of this task may carry (``"image"``, ``"video"``);
            see :func:`nim_async.protocol.tasks.task_for_media`.
        video_task: The task a video is sent with instead of this one (``freeform`` and
            ``generic``: ``"video-freeform"``, as vi-sdk does), or ``None`` to keep this task.
        refusal: Why a kind of media this task does not accept is refused, and what to do
            instead (for the error message), by media kind.
    """

    name: ClassVar[str]
    key: ClassVar[str]
    default_prompt: ClassVar[str]
    system_prompt: ClassVar[str | None] = None
    media: ClassVar[Literal["image", "video"]] = "image"
    accepts: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    video_task: ClassVar[str | None] = None
    refusal: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def output_schema(self) -> dict[str, Any]:
        """Return the JSON schema of the task's output (top-level key :attr:`key`)."""

    def build_prompt(self, user_prompt: str | None) -> str:
        """Return the text sent beside the image.

        Args:
            user_prompt: The caller's prompt, or ``None`` for the default.
        """
        return user_prompt if user_prompt else self.default_prompt

    @abstractmethod
    def parse(self, text: str, context: ParseContext) -> PredictionResponse:
        """Parse the model's full output into the task's response.

        Raises:
            PredictionParseError: carrying ``text`` when it cannot be parsed; never anything else.
        """
