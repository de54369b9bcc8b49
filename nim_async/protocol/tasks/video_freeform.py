"""Free-form answers about a video: ``{"freeform": {"caption": ...}}`` (vi-sdk's video task).

Only the task definition (prompts, schema, parser); the predictor sends the video as a
``video_url`` part (:mod:`nim_async.predict.video`). An image is refused (use ``freeform``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from nim_async.protocol.tasks.freeform import FreeformTask

__all__ = ["VideoFreeformTask"]


class VideoFreeformTask(FreeformTask):
    """Answer a request about a video in free text; same output and parser as ``freeform``."""

    name: ClassVar[str] = "video-freeform"
    key: ClassVar[str] = "freeform"
    media: ClassVar[Literal["image", "video"]] = "video"
    accepts: ClassVar[frozenset[str]] = frozenset({"video"})
    video_task: ClassVar[str | None] = None
    refusal: ClassVar[dict[str, str]] = {
        "image": "it asks about a video (a path or URL ending .mp4 / .webm, MP4 or WebM bytes, "
        "or a data:video/ URI); for an image use task_type='freeform'"
    }
    default_prompt: ClassVar[str] = (
        "Describe this video in detail: what happens, in the order it happens."
    )
    system_prompt: ClassVar[str | None] = (
        "You are an assistant who watches a video and does what the user asks about it, "
        "saying only what the video shows and keeping events in the order they happen. Put "
        'your whole answer in one JSON object and nothing after it: {"freeform": {"caption": '
        '"<your answer>"}}.'
    )
